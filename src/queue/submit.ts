import { parsePayload, type ReplyTarget } from '../jobs.ts';
import type { JobRecord, Store } from '../store/types.ts';
import type { JobQueue } from './queue.ts';

/**
 * The producer side, the same for every adapter and both queues: the store decides whether a request is
 * new (its idempotency key), the queue only carries it.
 */

export interface SubmitInput {
  /** Platform event id (Discord interaction or message id, Slack event_id): retries map to one job. */
  idempotencyKey: string;
  communityId: string | null;
  /** Validated here: a bad payload is the user's input error (UserInputError), never enqueued. */
  payload: unknown;
  replyTarget: ReplyTarget;
}

export async function submitJob(
  { store, queue }: { store: Store; queue: JobQueue },
  input: SubmitInput,
): Promise<{ job: JobRecord; created: boolean }> {
  const payload = parsePayload(input.payload);
  const { job, created } = await store.jobs.createOrGet({ ...input, payload });
  // Also for a repeat of a still-queued job: an add that failed last time (Redis down) is retried, and a
  // job already in the queue is left as it is.
  if (job.status === 'queued') await queue.add({ id: job.id, payload: job.payload });
  return { job, created };
}

/**
 * Cancels a job that has not finished; false if it already had (or was cancelled before). The store is
 * marked first, so whatever happens next (a worker taking the job, the engine finishing) finds it
 * cancelled: a worker replays the cancellation instead of running it, a late result is not recorded, and
 * delivery never posts a reply for it. Then the queue drops the waiting job or aborts the running one.
 */
export async function cancelJob(
  { store, queue }: { store: Store; queue: JobQueue },
  jobId: string,
): Promise<boolean> {
  if (!(await store.jobs.cancel(jobId))) return false;
  await queue.cancel(jobId);
  return true;
}
