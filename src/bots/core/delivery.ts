import { type DeliveryHandle, startDelivery } from '../../engine/queue/delivery.ts';
import type { JobQueue } from '../../engine/queue/queue.ts';
import type { Logger } from '../../log.ts';
import type { Store } from '../../store/types.ts';
import { type PlatformAdapter, throttleProgress } from './adapter.ts';

/**
 * Plugs an adapter into the exactly-once delivery loop: progress throttled to one update a second per
 * job and settled before the final reply, so a late progress edit can never overwrite it; index jobs
 * (no one waits for them) are recorded as delivered without a message.
 */
export function startAdapterDelivery(options: {
  store: Store;
  queue: JobQueue;
  logger: Logger;
  adapter: PlatformAdapter;
  /** Unique per process (host:pid), the name in delivery claims. */
  owner: string;
  progressIntervalMs?: number;
  sweepIntervalMs?: number;
}): DeliveryHandle {
  const { adapter, logger } = options;
  const throttle = throttleProgress(
    (job, progress) => adapter.showProgress(job, progress),
    (error, job) => logger.warn({ err: error, jobId: job.id }, 'progress update failed'),
    options.progressIntervalMs,
  );
  const handle = startDelivery({
    store: options.store,
    queue: options.queue,
    platform: adapter.platform,
    owner: options.owner,
    logger,
    sweepIntervalMs: options.sweepIntervalMs,
    async deliver(job) {
      if (job.kind === 'index') return { silent: true };
      await throttle.settle(job.id);
      return adapter.deliver(job);
    },
    onProgress(job, progress) {
      if (job.kind !== 'index') throttle.push(job, progress);
    },
  });
  return {
    sweep: handle.sweep,
    async close() {
      await handle.close();
      throttle.stop();
    },
  };
}
