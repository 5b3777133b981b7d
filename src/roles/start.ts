import type { Config } from '../config.ts';
import type { Engine } from '../jobs.ts';
import { createLogger, type Logger } from '../log.ts';
import { openBullJobQueue } from '../queue/bullmq.ts';
import { startEngineThread } from '../queue/engine-thread.ts';
import { MemoryJobQueue } from '../queue/memory.ts';
import type { JobQueue, WorkerHandle } from '../queue/queue.ts';
import { type Reconciler, startReconciler } from '../queue/reconcile.ts';
import { recoverUnfinished } from '../queue/recover.ts';
import { openWhenAvailable } from '../queue/redis.ts';
import { runJobs } from '../queue/worker.ts';
import { connectWithRetry, describeDatabase } from '../store/index.ts';
import type { Store } from '../store/types.ts';
import { type RunningAdapter, startAdapters, stopAdapters, untilSignal } from './adapters.ts';
import { observe } from './observe.ts';

/**
 * `gill start`: adapters and engine in one process. With no configuration that is the embedded PGlite
 * database, the in-process queue, the committed tiny bundle and the local playground; DATABASE_URL and
 * REDIS_URL switch the database and queue to the shared services, and platform tokens add Discord/Slack.
 */

const SHUTDOWN_GRACE_MS = 20_000;

/**
 * The engine runs in a thread of its own whenever it can open its own store connection (Postgres), so
 * inference never stalls the adapters' event loop. Embedded PGlite is one connection owned by this
 * thread, so there the engine shares it and runs here; the tiny bundle's jobs take about a second.
 */
async function openEngine(config: Config, store: Store, logger: Logger): Promise<Engine> {
  if (config.DATABASE_URL) {
    return startEngineThread(
      { module: new URL('./worker.ts', import.meta.url).href, exportName: 'openEngine', options: config },
      (error) => {
        logger.fatal({ err: error }, 'the engine thread died; stopping');
        process.exitCode = 1;
        process.kill(process.pid, 'SIGTERM');
      },
    );
  }
  const { createEngine } = await import('../engine/index.ts');
  return createEngine(config, store, logger);
}

export async function runStart(config: Config): Promise<void> {
  const logger = createLogger(config.GILL_LOG_LEVEL).child({ role: 'start' });
  // Served only when GILL_METRICS_PORT is set (src/roles/observe.ts).
  const observer = await observe(config, 'start', logger);
  const { metrics } = observer;
  const store = await connectWithRetry(config, logger);
  observer.parts.store = store;
  let queue: JobQueue | undefined;
  let engine: Engine | undefined;
  let worker: WorkerHandle | undefined;
  let reconciler: Reconciler | undefined;
  let adapters: RunningAdapter[] = [];
  try {
    const redisUrl = config.REDIS_URL;
    queue = redisUrl
      ? await openWhenAvailable(() => openBullJobQueue({ redisUrl, logger }), logger)
      : new MemoryJobQueue();
    observer.parts.queue = queue;
    const loading = performance.now();
    engine = await openEngine(config, store, logger);
    metrics.modelLoadSeconds.set({ part: 'engine' }, (performance.now() - loading) / 1000);
    observer.parts.modelLoaded = true;
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
    const playground = adapters.find((a) => a.name === 'playground');
    if (playground?.url) process.stdout.write(`\nOpen ${playground.url} to talk to the bot.\n\n`);
    const signal = await untilSignal();
    logger.info({ signal }, 'shutting down');
  } finally {
    await stopAdapters(adapters, logger);
    await worker?.close();
    await reconciler?.close();
    await Promise.allSettled([engine?.close(), queue?.close()]);
    await store.close();
    await observer.close();
  }
}
