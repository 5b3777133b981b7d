import type { Logger } from '../../log.ts';
import type { Store } from '../../store/types.ts';

/**
 * The retention sweep (README, "Security and reliability"): images deleted from the gallery stay as
 * soft-deleted rows for GILL_RETENTION_DAYS, then the sweep hard-deletes them and their bytes. Every bot
 * process sweeps; the statement is idempotent, so several at once only repeat each other's work.
 */

export const DAY_MS = 86_400_000;
const SWEEP_INTERVAL_MS = 60 * 60_000;

export interface RetentionSweep {
  /** One sweep now; resolves with what it removed. */
  sweep(): Promise<{ images: number; blobs: number }>;
  stop(): void;
}

export function startRetentionSweep(options: {
  store: Store;
  logger: Logger;
  retentionDays: number;
  /** Between sweeps (tests shorten it); the first runs one interval after start. */
  intervalMs?: number;
}): RetentionSweep {
  const { store, logger } = options;
  const retentionMs = Math.round(options.retentionDays * DAY_MS);
  const sweep = async () => {
    const removed = await store.images.purgeDeleted(retentionMs);
    if (removed.images || removed.blobs)
      logger.info({ ...removed, retentionDays: options.retentionDays }, 'retention sweep');
    return removed;
  };
  const timer = setInterval(() => {
    sweep().catch((error: unknown) => logger.warn({ err: error }, 'retention sweep failed; retrying later'));
  }, options.intervalMs ?? SWEEP_INTERVAL_MS);
  timer.unref();
  return { sweep, stop: () => clearInterval(timer) };
}
