import { randomUUID } from 'node:crypto';
import type { Logger } from '../log.ts';
import type { GillMetrics } from '../metrics/metrics.ts';
import type { JobRecord, Store } from '../store/types.ts';
import { QueueUnavailableError } from './errors.ts';
import type { JobQueue } from './queue.ts';
import { LOST_JOB_MESSAGE } from './worker.ts';

/**
 * No zombie jobs (#13 §3). The store is the record of truth; the queue only carries work. A job the store
 * holds unfinished while the queue does not hold it (an add that failed while Redis was down, keys lost to
 * a restart without persistence, FLUSHALL or eviction) would count against its user's and community's
 * caps for ever. Every pass compares the two and, for each such job:
 *   - the queue never had it or lost it: added again (the worker replays an outcome already recorded);
 *   - the queue finished it without the store hearing (a lost event): failed, so the user gets a reply;
 *   - the queue cannot be reached, and has not been for giveUpMs since the job last changed: failed with
 *     a message asking to try again, so the caps free up within a bounded time even during an outage.
 * So an unfinished job is re-enqueued or answered within graceMs + intervalMs once the queue answers, and
 * within giveUpMs + intervalMs if it never does.
 *
 * One process runs the passes, under a lease in the queue; the others stand by and take over within
 * leaseMs when it stops. The lease saves work, not correctness: adds are idempotent by job id and the
 * store only fails unfinished jobs, so two passes at once change nothing twice.
 */

export interface ReconcileOptions {
  store: Store;
  queue: JobQueue;
  logger?: Logger;
  /** Jobs that changed more recently than this are left alone: they are being added or started now. */
  graceMs?: number;
  /** How long a job may stay out of an unreachable queue before it is failed with a reply. */
  giveUpMs?: number;
  /** Unfinished jobs looked at per pass, oldest first. */
  limit?: number;
  /** Re-enqueued and failed jobs are counted here when given. */
  metrics?: GillMetrics;
}

export interface ReconcileReport {
  /** Jobs added to the queue again. */
  requeued: number;
  /** Jobs failed in the store (each gets a reply). */
  failed: number;
  /** Jobs left for a later pass because the queue could not be reached. */
  unreachable: number;
}

const UNREACHABLE_MESSAGE =
  'This request could not be started because the job queue was unavailable. Please try again.';

export const RECONCILE_DEFAULTS = {
  graceMs: 10_000,
  giveUpMs: 10 * 60_000,
  limit: 10_000,
  intervalMs: 15_000,
};

/** One pass over the store's unfinished jobs. */
export async function reconcileJobs(options: ReconcileOptions): Promise<ReconcileReport> {
  const { store, logger } = options;
  const graceMs = options.graceMs ?? RECONCILE_DEFAULTS.graceMs;
  const giveUpMs = options.giveUpMs ?? RECONCILE_DEFAULTS.giveUpMs;
  const report: ReconcileReport = { requeued: 0, failed: 0, unreachable: 0 };
  const jobs = await store.jobs.listUnfinished(options.limit ?? RECONCILE_DEFAULTS.limit);
  for (const job of jobs) {
    const idleMs = Date.now() - job.updatedAt.getTime();
    if (idleMs < graceMs) continue;
    try {
      await reconcileOne(options, job, report);
    } catch (error) {
      if (!(error instanceof QueueUnavailableError)) throw error;
      if (idleMs < giveUpMs) {
        report.unreachable += 1;
        continue;
      }
      await store.jobs.fail(job.id, { message: UNREACHABLE_MESSAGE, userFacing: true });
      options.metrics?.failures.inc({ kind: job.kind, reason: 'lost' });
      logger?.error({ jobId: job.id, err: error.message }, 'job failed: the queue stayed unreachable');
      report.failed += 1;
    }
  }
  if (report.requeued || report.failed) logger?.warn(report, 'reconciled the store with the queue');
  return report;
}

async function reconcileOne(
  { store, queue, logger, metrics }: ReconcileOptions,
  job: JobRecord,
  report: ReconcileReport,
): Promise<void> {
  const presence = await queue.presence(job.id);
  if (presence === 'held') return;
  if (presence === 'absent') {
    await queue.add({ id: job.id, payload: job.payload });
    logger?.warn({ jobId: job.id, status: job.status }, 'job missing from the queue; added again');
    metrics?.requeued.inc();
    report.requeued += 1;
    return;
  }
  await store.jobs.fail(job.id, { message: LOST_JOB_MESSAGE, userFacing: false });
  metrics?.failures.inc({ kind: job.kind, reason: 'lost' });
  logger?.error({ jobId: job.id }, 'the queue finished a job the store never heard of; failed it');
  report.failed += 1;
}

export interface Reconciler {
  /** Runs a pass now if this process holds the lease (null when another does). */
  runOnce(): Promise<ReconcileReport | null>;
  close(): Promise<void>;
}

const LEASE = 'reconciler';

/** Runs reconcileJobs every intervalMs, in one process of all those sharing the queue. */
export function startReconciler(options: ReconcileOptions & { intervalMs?: number }): Reconciler {
  const intervalMs = options.intervalMs ?? RECONCILE_DEFAULTS.intervalMs;
  const leaseMs = intervalMs * 3;
  const owner = randomUUID();
  const { queue, logger } = options;

  const runOnce = async (): Promise<ReconcileReport | null> => {
    let holder = true;
    try {
      holder = await queue.holdLease(LEASE, owner, leaseMs);
    } catch (error) {
      // The queue is down: every process may then give up on old jobs; the store fails each one once.
      if (!(error instanceof QueueUnavailableError)) throw error;
    }
    return holder ? reconcileJobs(options) : null;
  };

  let running: Promise<unknown> | null = null;
  const tick = () => {
    // A pass slower than the interval is not overlapped by the next.
    running ??= runOnce()
      .catch((error) => logger?.warn({ err: error }, 'reconciling jobs failed'))
      .finally(() => {
        running = null;
      });
  };
  const timer = setInterval(tick, intervalMs);
  timer.unref();
  // The first pass at once: a restart is when jobs were most likely lost.
  tick();

  return {
    runOnce,
    async close() {
      clearInterval(timer);
      await running;
      await queue.releaseLease(LEASE, owner).catch(() => {});
    },
  };
}
