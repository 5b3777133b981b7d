import type { JobProgress } from '../../jobs.ts';
import type { DeliveryClaim, JobRecord } from '../../store/types.ts';
import type { Eta } from './eta.ts';
import type { Platform } from './turn.ts';

/**
 * What a platform adapter gives the core's delivery: how to send a finished job's reply and how to
 * show its progress. Delivery (exactly once, also after restarts) is driven by the generic loop in
 * src/queue/delivery.ts; see startAdapterDelivery in delivery.ts beside this file.
 */

/** What was sent (message ids...), recorded with the job when it is marked delivered. */
export type DeliveryReceipt = Record<string, unknown>;

export interface PlatformAdapter {
  readonly platform: Platform;
  /**
   * Sends the reply of a finished (completed or failed) chat, imagine or find job; render it with
   * renderReply. Called once per job under a delivery claim; throwing leaves it to be retried. When
   * `claim.redelivery` is set, an earlier attempt may have posted some or all of the reply before it
   * died: the adapter must not post those parts again.
   */
  deliver(job: JobRecord, claim?: DeliveryClaim): Promise<DeliveryReceipt>;
  /**
   * Shows progress (render it with renderProgress, and `eta` with renderEta when there is one), with the
   * Cancel button (PROGRESS_BUTTONS). Called at most once a second per job.
   */
  showProgress(job: JobRecord, progress: JobProgress, eta?: Eta | null): Promise<void>;
  /** Replaces a cancelled job's progress message with `text`, without buttons; nothing if there is none. */
  showCancelled(job: JobRecord, text: string): Promise<void>;
}

export interface ProgressThrottle {
  /** Offers an update; it is shown now, or when the interval has passed (only the newest waiting one). */
  push(job: JobRecord, progress: JobProgress): void;
  /**
   * Drops anything waiting for the job, resolves when an update in flight is done, and ignores later
   * updates for it: call before delivering, so no progress edit can land after the reply.
   */
  settle(jobId: string): Promise<void>;
  stop(): void;
}

interface Slot {
  lastAt: number;
  pending?: { job: JobRecord; progress: JobProgress };
  timer?: NodeJS.Timeout;
  inFlight?: Promise<void>;
}

/**
 * Limits progress edits to one per interval per job, so they stay clear of the platforms' edit rate
 * limits (Discord 429s on streaming edits), and never lets an edit race the final reply.
 */
export function throttleProgress(
  show: (job: JobRecord, progress: JobProgress) => Promise<void>,
  onError: (error: unknown, job: JobRecord) => void,
  intervalMs = 1000,
): ProgressThrottle {
  const slots = new Map<string, Slot>();
  const settled = new Set<string>();

  function run(jobId: string, slot: Slot) {
    const next = slot.pending;
    if (!next || slot.inFlight) return;
    slot.pending = undefined;
    slot.lastAt = Date.now();
    slot.inFlight = show(next.job, next.progress)
      .catch((error) => onError(error, next.job))
      .finally(() => {
        slot.inFlight = undefined;
        if (slot.pending) schedule(jobId, slot);
      });
  }

  function schedule(jobId: string, slot: Slot) {
    if (slot.timer) return;
    const wait = Math.max(0, slot.lastAt + intervalMs - Date.now());
    slot.timer = setTimeout(() => {
      slot.timer = undefined;
      run(jobId, slot);
    }, wait);
  }

  return {
    push(job, progress) {
      if (settled.has(job.id)) return;
      const slot = slots.get(job.id) ?? { lastAt: 0 };
      slots.set(job.id, slot);
      slot.pending = { job, progress };
      schedule(job.id, slot);
    },
    async settle(jobId) {
      settled.add(jobId);
      if (settled.size > 10_000) settled.delete(settled.values().next().value as string);
      const slot = slots.get(jobId);
      if (!slot) return;
      clearTimeout(slot.timer);
      slot.timer = undefined;
      slot.pending = undefined;
      await slot.inFlight;
      slots.delete(jobId);
    },
    stop() {
      for (const slot of slots.values()) clearTimeout(slot.timer);
      slots.clear();
    },
  };
}
