import type { Logger } from '../log.ts';
import type { Store } from '../store/types.ts';
import type { JobQueue } from './queue.ts';

const RECOVER_LIMIT = 10_000;

/**
 * Re-enqueues the store's unfinished jobs at start. For the in-process queue this is stall recovery: a
 * restarted embedded process lost its queue but not its store. For BullMQ it re-adds jobs whose add never
 * reached Redis; jobs Redis still holds are left alone (same id, no-op).
 */
export async function recoverUnfinished(store: Store, queue: JobQueue, logger?: Logger): Promise<number> {
  const jobs = await store.jobs.listUnfinished(RECOVER_LIMIT);
  for (const job of jobs) await queue.add({ id: job.id, payload: job.payload });
  if (jobs.length) logger?.info({ count: jobs.length }, 'unfinished jobs re-enqueued');
  return jobs.length;
}
