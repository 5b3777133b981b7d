import type { JobProgress } from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import { type DeliveryHandle, startDelivery } from '../../queue/delivery.ts';
import type { JobQueue } from '../../queue/queue.ts';
import type { JobRecord, Store } from '../../store/types.ts';
import { type PlatformAdapter, throttleProgress } from './adapter.ts';
import { EtaEstimator } from './eta.ts';

/**
 * Plugs an adapter into the exactly-once delivery loop: progress throttled to one update a second per
 * job and settled before the final reply, so a late progress edit can never overwrite it; index jobs
 * (no one waits for them) are recorded as delivered without a message. Every progress update carries an
 * estimated end when there is one, from the queue events this process has seen (see eta.ts).
 */

export interface AdapterDelivery extends DeliveryHandle {
  /** Shows progress the bot knows itself (the queue position at submit), through the same throttle. */
  progress(jobId: string, progress: JobProgress): Promise<void>;
  /** Keeps a waiting job's queue position up to date on its progress message until the job starts. */
  watchPosition(jobId: string): void;
  /**
   * Turns a job cancelled through the core into `text` on its progress message, after any progress edit
   * in flight, and stops further progress edits for it.
   */
  cancelled(job: JobRecord, text: string): Promise<void>;
}

/** Waiting jobs watched at most, so a queue that never drains cannot grow the map without bound. */
const MAX_WATCHED = 10_000;

export function startAdapterDelivery(options: {
  store: Store;
  queue: JobQueue;
  logger: Logger;
  adapter: PlatformAdapter;
  /** Unique per process (host:pid), the name in delivery claims. */
  owner: string;
  progressIntervalMs?: number;
  sweepIntervalMs?: number;
  /** How long a delivery claim holds before another process may take the job over. */
  leaseMs?: number;
  /** How often waiting jobs' queue positions are read again. */
  positionRefreshMs?: number;
  /** Learns run times from the queue's events; one of its own when not given. */
  estimator?: EtaEstimator;
}): AdapterDelivery {
  const { adapter, logger, store } = options;
  const estimator = options.estimator ?? new EtaEstimator();
  // Every job's events, whichever platform asked for it: they all measure the same workers.
  const unsubscribe = options.queue.subscribe((event) => {
    if (event.type === 'progress') return estimator.observe(event.jobId, event.progress);
    if (event.type === 'failed') return estimator.forget(event.jobId);
    const run = estimator.finish(event.jobId);
    if (!run) return;
    store.jobs
      .get(event.jobId)
      .then((job) => job && estimator.learn(job.kind, run))
      .catch((error: unknown) => logger.warn({ err: error, jobId: event.jobId }, 'run time not recorded'));
  });
  const throttle = throttleProgress(
    // Read fresh: an earlier update may have recorded the progress message's id, or the job may have been
    // cancelled (from another bot process too), when its message must no longer show progress. The
    // estimate is made now, when the edit goes out, not when the update was offered.
    async (job, progress) => {
      const fresh = (await store.jobs.get(job.id)) ?? job;
      if (fresh.status !== 'cancelled') {
        await adapter.showProgress(fresh, progress, estimator.estimate(fresh, progress));
      }
    },
    (error, job) => logger.warn({ err: error, jobId: job.id }, 'progress update failed'),
    options.progressIntervalMs,
  );
  const handle = startDelivery({
    store,
    queue: options.queue,
    platform: adapter.platform,
    owner: options.owner,
    logger,
    sweepIntervalMs: options.sweepIntervalMs,
    leaseMs: options.leaseMs,
    async deliver(job, claim) {
      if (job.kind === 'index') return { silent: true };
      await throttle.settle(job.id);
      // Read again: progress edits and an earlier attempt's record of posted parts may postdate `job`.
      return adapter.deliver((await store.jobs.get(job.id)) ?? job, claim);
    },
    onProgress(job, progress) {
      if (job.kind !== 'index') throttle.push(job, progress);
    },
  });
  async function progress(jobId: string, update: JobProgress, onlyWaiting = false): Promise<void> {
    const job = await store.jobs.get(jobId);
    if (job && (job.status === 'queued' || (job.status === 'running' && !onlyWaiting)))
      throttle.push(job, update);
  }

  // Last position shown per waiting job (-1: none yet); a job leaves the map when the queue no longer has it waiting.
  const waiting = new Map<string, number>();
  const refresh = setInterval(() => {
    for (const [jobId, last] of waiting) {
      options.queue
        .position(jobId)
        .then(async (position) => {
          if (position === null) waiting.delete(jobId);
          else if (position !== last) {
            waiting.set(jobId, position);
            // A position read just before the job started must not replace its running progress.
            await progress(jobId, { stage: 'queued', position }, true);
          }
        })
        .catch((error: unknown) => logger.warn({ err: error, jobId }, 'queue position refresh failed'));
    }
  }, options.positionRefreshMs ?? 2000);
  refresh.unref();

  return {
    sweep: handle.sweep,
    progress,
    watchPosition(jobId) {
      waiting.set(jobId, -1);
      if (waiting.size > MAX_WATCHED) waiting.delete(waiting.keys().next().value as string);
    },
    async cancelled(job, text) {
      waiting.delete(job.id);
      estimator.forget(job.id);
      await throttle.settle(job.id);
      await adapter.showCancelled((await store.jobs.get(job.id)) ?? job, text);
    },
    async close() {
      clearInterval(refresh);
      unsubscribe();
      await handle.close();
      throttle.stop();
    },
  };
}
