import type { JobContext, JobPayload, JobProgress, JobResult } from '../jobs.ts';
import type { Lane } from './fair.ts';

/**
 * One job-queue interface, two implementations: BullMQ on Redis (distributed) and an in-process queue
 * (embedded). Both run the same contract test suite. The store's jobs table is the record of truth for
 * idempotency and delivery; the queue moves work and progress between processes.
 */

export interface QueuedJob {
  /** The store's job id; also the queue's job id, so a duplicate add is a no-op. */
  id: string;
  payload: JobPayload;
}

export type QueueEvent =
  | { type: 'progress'; jobId: string; progress: JobProgress }
  | { type: 'completed'; jobId: string; result: JobResult }
  | { type: 'failed'; jobId: string; error: { message: string; userFacing: boolean } };

/** A job as its processor sees it: which attempt this is, so a failure on the last one is recorded as final. */
export interface ActiveJob extends QueuedJob {
  /** 1 on the first run. */
  attempt: number;
  maxAttempts: number;
  /** When it was first added to the queue (epoch ms), for its wait time. */
  queuedAt: number;
}

export type JobProcessor = (job: ActiveJob, ctx: JobContext) => Promise<JobResult>;

export interface WorkerOptions {
  /** Jobs at a time in this process. The engine worker uses 1. */
  concurrency?: number;
  /** How long close() lets running jobs finish before aborting them and putting them back in the queue. */
  shutdownGraceMs?: number;
}

export interface WorkerHandle {
  /** Stops taking jobs, lets the running one finish (or be recovered by another worker), then resolves. */
  close(): Promise<void>;
}

/** Whether the queue holds a job: waiting, delayed or running; finished; or not at all. */
export type JobPresence = 'held' | 'finished' | 'absent';

export interface JobQueue {
  readonly kind: 'bullmq' | 'memory';
  /** Adds the job; adding an id that is already queued, running or finished changes nothing. */
  add(job: QueuedJob): Promise<void>;
  /** Jobs waiting ahead of this one (0 = next), or null when it is no longer waiting. */
  position(jobId: string): Promise<number | null>;
  /** Jobs waiting (not running, not waiting out a retry delay) per lane. */
  depth(): Promise<Record<Lane, number>>;
  /** Whether the queue still holds the job (the reconciler compares it with the store). */
  presence(jobId: string): Promise<JobPresence>;
  /**
   * Takes or renews a lease named `name` among every client of this queue, for ttlMs; true while
   * `owner` holds it. One process runs a periodic task (the reconciler) and another takes over when it
   * stops renewing.
   */
  holdLease(name: string, owner: string, ttlMs: number): Promise<boolean>;
  /** Gives the lease up if `owner` holds it. */
  releaseLease(name: string, owner: string): Promise<void>;
  /** Cancels a waiting job, or aborts a running one through its AbortSignal. */
  cancel(jobId: string): Promise<boolean>;
  /** Progress and outcome events of all jobs, from any worker. Returns an unsubscribe function. */
  subscribe(listener: (event: QueueEvent) => void): () => void;
  /** Starts consuming jobs in this process. */
  process(processor: JobProcessor, options?: WorkerOptions): WorkerHandle;
  close(): Promise<void>;
}
