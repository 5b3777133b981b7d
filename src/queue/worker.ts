import type { Engine, JobResult } from '../jobs.ts';
import type { Logger } from '../log.ts';
import { communityClassOf, type GillMetrics } from '../metrics/metrics.ts';
import type { JobRecord, Store } from '../store/types.ts';
import { FinalJobError, JobCancelledError, judgeFailure } from './errors.ts';
import type { ActiveJob, JobQueue, WorkerHandle } from './queue.ts';

/**
 * The engine worker's loop: takes jobs one at a time, runs the engine on them with progress and the
 * abort signal, and records every outcome in the store BEFORE the queue reports it, so whoever hears
 * "completed" or "failed" finds the result in the store. A job the queue gives up on by itself (one that
 * stalled too often) never reaches this loop; the reconciler (reconcile.ts) fails it in the store. The
 * loop does not read the queue's event stream for that: every worker would read every job's events, a
 * cost per job that grows with the size of the fleet.
 */

export interface RunJobsOptions {
  queue: JobQueue;
  store: Store;
  engine: Engine;
  logger: Logger;
  /** How long a shutdown lets the running job finish before putting it back in the queue. */
  shutdownGraceMs?: number;
  /** Wait and run times, failures and retries are recorded here when given. */
  metrics?: GillMetrics;
}

/** Jobs the queue failed without a worker recording it (a job that killed its workers too often). */
export const LOST_JOB_MESSAGE = 'The worker stopped while working on this request.';

export function runJobs({
  queue,
  store,
  engine,
  logger,
  shutdownGraceMs,
  metrics,
}: RunJobsOptions): WorkerHandle {
  return queue.process(
    async (job, ctx) => {
      const record = await store.jobs.get(job.id);
      if (!record)
        throw new FinalJobError({ message: `job ${job.id} is not in the store`, userFacing: false });
      const settled = outcomeOf(record);
      if (settled) return settled();

      const kind = job.payload.kind;
      const log = logger.child({ jobId: job.id, kind, attempt: job.attempt });
      await store.jobs.markRunning(job.id);
      log.info('job started');
      if (job.attempt === 1) {
        metrics?.waitSeconds.observe(
          { kind, community_class: communityClassOf(job.payload) },
          (Date.now() - job.queuedAt) / 1000,
        );
      }
      const started = performance.now();
      const seconds = () => (performance.now() - started) / 1000;
      try {
        const result = await engine.run(job.payload, { progress: ctx.progress, signal: ctx.signal });
        await store.jobs.complete(job.id, result);
        metrics?.runSeconds.observe({ kind, outcome: 'completed' }, seconds());
        log.info({ ms: Math.round(seconds() * 1000) }, 'job completed');
        return result;
      } catch (error) {
        const outcome = await recordFailure(store, job, error, ctx.signal, log);
        metrics?.runSeconds.observe({ kind, outcome }, seconds());
        if (outcome === 'retry') metrics?.retries.inc({ kind });
        else if (outcome !== 'released') metrics?.failures.inc({ kind, reason: outcome });
        throw error;
      }
    },
    { concurrency: 1, shutdownGraceMs },
  );
}

/** A job already finished in the store (its worker died before telling the queue): replay the outcome. */
function outcomeOf(record: JobRecord): (() => JobResult) | null {
  switch (record.status) {
    case 'completed':
      return () => record.result!;
    case 'failed':
      return () => {
        throw new FinalJobError(record.error ?? { message: LOST_JOB_MESSAGE, userFacing: false });
      };
    case 'cancelled':
      return () => {
        throw new JobCancelledError();
      };
    default:
      return null;
  }
}

/** Records a failed run in the store; says what became of the job. */
async function recordFailure(
  store: Store,
  job: ActiveJob,
  error: unknown,
  signal: AbortSignal,
  log: Logger,
): Promise<'released' | 'retry' | 'cancelled' | 'user_input' | 'error'> {
  const verdict = judgeFailure(error, signal, job.attempt, job.maxAttempts);
  if (verdict.kind === 'release') {
    log.info('job released for another worker');
    return 'released';
  }
  if (verdict.kind === 'retry') {
    log.warn({ err: error }, 'job failed; the queue will retry it');
    return 'retry';
  }
  if (signal.aborted && signal.reason instanceof JobCancelledError) {
    await store.jobs.cancel(job.id);
    log.info('job cancelled');
    return 'cancelled';
  }
  await store.jobs.fail(job.id, verdict.failure);
  log[verdict.failure.userFacing ? 'info' : 'error']({ err: error }, 'job failed');
  return verdict.failure.userFacing ? 'user_input' : 'error';
}
