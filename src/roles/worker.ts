import { type Config, ConfigError } from '../config.ts';
import type { Engine } from '../jobs.ts';
import { createLogger } from '../log.ts';
import { openBullJobQueue } from '../queue/bullmq.ts';
import { startEngineThread } from '../queue/engine-thread.ts';
import type { JobQueue } from '../queue/queue.ts';
import { openWhenAvailable, redactRedisUrl } from '../queue/redis.ts';
import { type RunJobsOptions, runJobs } from '../queue/worker.ts';
import { connect, connectWithRetry, describeDatabase } from '../store/index.ts';
import type { Store } from '../store/types.ts';
import { observe } from './observe.ts';
import { type Shutdown, watchShutdown } from './shutdown.ts';

/**
 * `gill worker`: the engine only. Takes jobs from Redis one at a time, runs the engine in a thread of its
 * own (so the queue lock is renewed while inference blocks that thread) and writes outcomes to Postgres,
 * where the bots pick them up. SIGTERM/SIGINT: stop taking jobs, finish the running one or, past the
 * grace period, put it back in the queue.
 */

const SHUTDOWN_GRACE_MS = 20_000;
/** After the first signal the process ends within this, also when something fails to close. */
const SHUTDOWN_DEADLINE_MS = SHUTDOWN_GRACE_MS + 10_000;

export async function runWorker(config: Config): Promise<void> {
  const problems: string[] = [];
  if (!config.REDIS_URL) {
    problems.push(
      'REDIS_URL: required by `gill worker` (the queue it takes jobs from); `gill start` needs no Redis',
    );
  }
  if (!config.DATABASE_URL) {
    problems.push(
      'DATABASE_URL: required by `gill worker` (the Postgres database it shares with `gill bot`)',
    );
  }
  if (problems.length || !config.REDIS_URL) throw new ConfigError(problems);
  const redisUrl = config.REDIS_URL;
  const logger = createLogger(config.GILL_LOG_LEVEL).child({ role: 'worker' });

  // A signal during start-up (waiting for Postgres or Redis) ends the wait.
  const shutdown = watchShutdown(logger, SHUTDOWN_DEADLINE_MS);
  const observer = await observe(config, 'worker', logger);
  const { metrics, parts } = observer;
  let store: Store | undefined;
  let queue: JobQueue | undefined;
  let engine: Engine | undefined;
  try {
    store = await connectWithRetry(config, logger, { signal: shutdown.signal });
    parts.store = store;
    const lock = { lockDurationMs: config.GILL_JOB_LOCK_MS, stalledIntervalMs: config.GILL_JOB_LOCK_MS / 2 };
    queue = await openWhenAvailable(() => openBullJobQueue({ redisUrl, logger, ...lock }), logger, {
      signal: shutdown.signal,
    });
    parts.queue = queue;
    const loading = performance.now();
    engine = await startEngineThread(
      { module: import.meta.url, exportName: 'openEngine', options: config },
      (error) => {
        logger.fatal({ err: error }, 'the engine thread died; stopping');
        process.exitCode = 1;
        process.kill(process.pid, 'SIGTERM');
      },
    );
    metrics.modelLoadSeconds.set({ part: 'engine' }, (performance.now() - loading) / 1000);
    parts.modelLoaded = true;
  } catch (error) {
    await Promise.allSettled([engine?.close(), queue?.close(), store?.close(), observer.close()]);
    if (shutdown.signal.aborted) {
      logger.info('stopped while starting');
      return;
    }
    throw error;
  }
  logger.info({ database: describeDatabase(config), redis: redactRedisUrl(redisUrl) }, 'worker taking jobs');
  try {
    await serveJobs({ queue, store, engine, logger, metrics, shutdownGraceMs: SHUTDOWN_GRACE_MS }, shutdown);
  } finally {
    parts.modelLoaded = false;
    await Promise.allSettled([engine.close(), queue.close(), store.close(), observer.close()]);
  }
  logger.info('worker stopped');
}

/** Runs jobs until SIGTERM or SIGINT (watched from now unless `shutdown` is given), then shuts down gracefully. */
export async function serveJobs(
  options: RunJobsOptions,
  shutdown: Shutdown = watchShutdown(options.logger, (options.shutdownGraceMs ?? 20_000) + 10_000),
): Promise<void> {
  const handle = runJobs(options);
  const signal = await shutdown.requested;
  options.logger.info({ signal }, 'shutting down: finishing or releasing the running job');
  await handle.close().catch((error: unknown) => options.logger.error({ err: error }, 'unclean shutdown'));
}

/** The engine thread's factory: its own store connection, then the engine over the model bundle. */
export async function openEngine(config: Config): Promise<Engine> {
  const logger = createLogger(config.GILL_LOG_LEVEL).child({ role: 'engine' });
  const store = await connect(config, { logger });
  try {
    const { createEngine } = await import('../engine/index.ts');
    const engine = await createEngine(config, store, logger);
    return {
      run: (payload, ctx) => engine.run(payload, ctx),
      close: async () => {
        await engine.close();
        await store.close();
      },
    };
  } catch (error) {
    await store.close();
    throw error;
  }
}
