import type { Engine, JobResult } from '../jobs.ts';
import type { Logger } from '../log.ts';
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
}

/** Jobs the queue failed without a worker recording it (a job that killed its workers too often). */
export const LOST_JOB_MESSAGE = 'The worker stopped while working on this request.';

export function runJobs({ queue, store, engine, logger, shutdownGraceMs }: RunJobsOptions): WorkerHandle {
  return queue.process(
    async (job, ctx) => {
      const record = await store.jobs.get(job.id);
      if (!record)
        throw new FinalJobError({ message: `job ${job.id} is not in the store`, userFacing: false });
      const settled = outcomeOf(record);
      if (settled) return settled();

      const log = logger.child({ jobId: job.id, kind: job.payload.kind, attempt: job.attempt });
      await store.jobs.markRunning(job.id);
      log.info('job started');
      const started = performance.now();
      try {
        const result = await engine.run(job.payload, { progress: ctx.progress, signal: ctx.signal });
        await store.jobs.complete(job.id, result);
        log.info({ ms: Math.round(performance.now() - started) }, 'job completed');
        return result;
      } catch (error) {
        await recordFailure(store, job, error, ctx.signal, log);
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

async function recordFailure(store: Store, job: ActiveJob, error: unknown, signal: AbortSignal, log: Logger) {
  const verdict = judgeFailure(error, signal, job.attempt, job.maxAttempts);
  if (verdict.kind === 'release') {
    log.info('job released for another worker');
  } else if (verdict.kind === 'retry') {
    log.warn({ err: error }, 'job failed; the queue will retry it');
  } else if (signal.aborted && signal.reason instanceof JobCancelledError) {
    await store.jobs.cancel(job.id);
    log.info('job cancelled');
  } else {
    await store.jobs.fail(job.id, verdict.failure);
    log[verdict.failure.userFacing ? 'info' : 'error']({ err: error }, 'job failed');
  }
}
