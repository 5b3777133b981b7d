import type { JobPayload, JobProgress, JobResult } from './jobs.ts';

/**
 * What the worker needs from the engine. The GILL implementation lives in src/engine/gill and
 * src/engine/diffusion; tests use a double from test/.
 */
export interface JobContext {
  /** Report progress; the worker forwards it to the queue (and so to the bot). */
  progress(update: JobProgress): void;
  /** Aborted when the job is cancelled or the worker shuts down. */
  signal: AbortSignal;
}

export interface Engine {
  run(payload: JobPayload, ctx: JobContext): Promise<JobResult>;
  close(): Promise<void>;
}
