import type { Config } from '../config.ts';
import type { Engine } from '../jobs.ts';
import { createLogger, type Logger } from '../log.ts';
import { openBullJobQueue } from '../queue/bullmq.ts';
import {
  type EngineThreadContext,
  type EngineThreadSpec,
  startEngineThread,
} from '../queue/engine-thread.ts';
import { MemoryJobQueue } from '../queue/memory.ts';
import type { JobQueue, WorkerHandle } from '../queue/queue.ts';
import { type Reconciler, startReconciler } from '../queue/reconcile.ts';
import { recoverUnfinished } from '../queue/recover.ts';
import { openWhenAvailable } from '../queue/redis.ts';
import { runJobs } from '../queue/worker.ts';
import { connectWithRetry, describeDatabase } from '../store/index.ts';
import { type RunningAdapter, startAdapters, stopAdapters } from './adapters.ts';
import { type Observer, observe } from './observe.ts';
import { watchShutdown } from './shutdown.ts';
import { openEngine as openWorkerEngine } from './worker.ts';

/**
 * `gill start`: adapters and engine in one process. With no configuration that is the embedded PGlite
 * database, the in-process queue, the committed tiny bundle and the local playground; DATABASE_URL and
 * REDIS_URL switch the database and queue to the shared services, and platform tokens add Discord/Slack.
 */

const SHUTDOWN_GRACE_MS = 20_000;
/** After the first signal the process ends within this, also when something fails to close. */
const SHUTDOWN_DEADLINE_MS = SHUTDOWN_GRACE_MS + 10_000;

/**
 * The engine always runs in a thread of its own, so inference never stalls the adapters' event loop
 * (Discord's 3 s deferral, Slack's 3 s ack). With Postgres the thread opens its own connection; the
 * embedded PGlite database belongs to this thread, so there the engine's store calls come back here
 * (engine-thread.ts, the store bridge).
 */
const ENGINE_THREAD: EngineThreadSpec = { module: import.meta.url, exportName: 'openEngine', options: null };

export interface EmbeddedOptions {
  /** The engine thread's module and factory; `gill start`'s own (openEngine below) unless given. */
  engine?: Omit<EngineThreadSpec, 'options'>;
  /** Stops start-up early (a signal). */
  signal?: AbortSignal;
  /** Metrics to record into and readiness to report, as each part opens (src/roles/observe.ts). */
  observer?: Pick<Observer, 'metrics' | 'parts'>;
}

export interface Embedded {
  adapters: RunningAdapter[];
  stop(): Promise<void>;
}

/** The engine thread's factory in `gill start`: over its own Postgres connection, or the bridged store. */
export async function openEngine(config: Config, context: EngineThreadContext): Promise<Engine> {
  if (config.DATABASE_URL) return openWorkerEngine(config);
  const logger = createLogger(config.GILL_LOG_LEVEL).child({ role: 'engine' });
  const { createEngine } = await import('../engine/index.ts');
  return createEngine(config, context.store!, logger);
}

/** Everything `gill start` runs, started; stop() ends it in order. */
export async function startEmbedded(
  config: Config,
  logger: Logger,
  options: EmbeddedOptions = {},
): Promise<Embedded> {
  const metrics = options.observer?.metrics;
  const parts = options.observer?.parts ?? {};
  const store = await connectWithRetry(config, logger, { signal: options.signal });
  parts.store = store;
  let queue: JobQueue | undefined;
  let engine: Engine | undefined;
  let worker: WorkerHandle | undefined;
  let reconciler: Reconciler | undefined;
  let adapters: RunningAdapter[] = [];
  const stop = async () => {
    parts.modelLoaded = false;
    await stopAdapters(adapters, logger);
    await worker?.close();
    await reconciler?.close();
    await Promise.allSettled([engine?.close(), queue?.close()]);
    await store.close();
  };
  try {
    const redisUrl = config.REDIS_URL;
    queue = redisUrl
      ? await openWhenAvailable(() => openBullJobQueue({ redisUrl, logger }), logger, {
          signal: options.signal,
        })
      : new MemoryJobQueue();
    parts.queue = queue;
    const loading = performance.now();
    engine = await startEngineThread(
      { ...ENGINE_THREAD, ...options.engine, options: config },
      (error) => {
        logger.fatal({ err: error }, 'the engine thread died; stopping');
        process.exitCode = 1;
        process.kill(process.pid, 'SIGTERM');
      },
      config.DATABASE_URL ? {} : { store },
    );
    metrics?.modelLoadSeconds.set({ part: 'engine' }, (performance.now() - loading) / 1000);
    parts.modelLoaded = true;
    worker = runJobs({ queue, store, engine, logger, metrics, shutdownGraceMs: SHUTDOWN_GRACE_MS });
    if (queue.kind === 'memory') {
      const recovered = await recoverUnfinished(store, queue, logger);
      if (recovered) logger.info({ recovered }, 'resumed jobs left unfinished by the last run');
    }
    reconciler = startReconciler({ store, queue, logger, metrics });
    adapters = await startAdapters({ config, store, queue, logger, playground: true, metrics });
    const { seedGallery } = await import('../bots/playground/seed-gallery.ts');
    void seedGallery({ store, queue, logger }).catch((error: unknown) =>
      logger.warn({ err: error }, 'could not seed the playground gallery'),
    );
    logger.info(
      {
        database: describeDatabase(config),
        queue: queue.kind === 'memory' ? 'in-process' : 'Redis',
        model: config.modelDir,
        adapters: adapters.map((a) => (a.url ? `${a.name} ${a.url}` : a.name)),
      },
      'gill is running',
    );
    return { adapters, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

export async function runStart(config: Config): Promise<void> {
  const logger = createLogger(config.GILL_LOG_LEVEL).child({ role: 'start' });
  const shutdown = watchShutdown(logger, SHUTDOWN_DEADLINE_MS);
  // Served only when GILL_METRICS_PORT is set (src/roles/observe.ts).
  const observer = await observe(config, 'start', logger);
  let embedded: Embedded;
  try {
    embedded = await startEmbedded(config, logger, { signal: shutdown.signal, observer });
  } catch (error) {
    await observer.close();
    if (!shutdown.signal.aborted) throw error;
    logger.info('stopped while starting');
    return;
  }
  try {
    const playground = embedded.adapters.find((a) => a.name === 'playground');
    if (playground?.url && !shutdown.signal.aborted)
      process.stdout.write(`\nOpen ${playground.url} to talk to the bot.\n\n`);
    const signal = await shutdown.requested;
    logger.info({ signal }, 'shutting down');
  } finally {
    await embedded.stop();
    await observer.close();
  }
}
