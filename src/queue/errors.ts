import { UserInputError } from '../jobs.ts';

/** Abort reason of a job someone cancelled: final, never retried, not an error of the system. */
export class JobCancelledError extends Error {
  constructor() {
    super('The job was cancelled.');
    this.name = 'JobCancelledError';
  }
}

/** Abort reason of a job whose worker is shutting down: the job goes back to the queue, untouched. */
export class WorkerShutdownError extends Error {
  constructor() {
    super('The worker is shutting down; the job goes back to the queue.');
    this.name = 'WorkerShutdownError';
  }
}

/** The queue's backing service cannot be reached. */
export class QueueUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'QueueUnavailableError';
  }
}

export type JobFailure = { message: string; userFacing: boolean };

/** A failure that is already final (e.g. replayed from the store): never retried, reported as it is. */
export class FinalJobError extends Error {
  constructor(readonly failure: JobFailure) {
    super(failure.message);
    this.name = 'FinalJobError';
  }
}

/** What a processor's error means for the queue: retry it, release it, or fail it for good with this message. */
export type FailureVerdict = { kind: 'release' } | { kind: 'retry' } | { kind: 'final'; failure: JobFailure };

export function judgeFailure(
  error: unknown,
  signal: AbortSignal,
  attempt: number,
  maxAttempts: number,
): FailureVerdict {
  if (signal.aborted && signal.reason instanceof WorkerShutdownError) return { kind: 'release' };
  if (error instanceof JobCancelledError || (signal.aborted && signal.reason instanceof JobCancelledError)) {
    return { kind: 'final', failure: { message: new JobCancelledError().message, userFacing: true } };
  }
  if (error instanceof FinalJobError) return { kind: 'final', failure: error.failure };
  // By name too: an error rebuilt after crossing a thread boundary is not the same class instance.
  if (error instanceof UserInputError || (error instanceof Error && error.name === 'UserInputError')) {
    return { kind: 'final', failure: { message: error.message, userFacing: true } };
  }
  if (attempt < maxAttempts) return { kind: 'retry' };
  const message = error instanceof Error ? error.message : String(error);
  return { kind: 'final', failure: { message, userFacing: false } };
}

/** Exponential backoff: base, 2×base, 4×base... */
export function backoffDelay(baseMs: number, attempt: number): number {
  return baseMs * 2 ** (attempt - 1);
}
