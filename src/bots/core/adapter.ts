import type { JobProgress } from '../../jobs.ts';
import type { HeldClaim } from '../../queue/delivery.ts';
import type { JobRecord } from '../../store/types.ts';
import type { Eta } from './eta.ts';
import type { Platform } from './turn.ts';

/**
 * The contract every platform's outbound side (src/bots/<platform>/outbound.ts) fulfils: how to show an
 * accepted job, its progress and its cancellation, and how to send a finished job's reply. Everything
 * else about a reply (exactly once, also after restarts; progress throttled and settled before the reply;
 * queue positions kept current) is done once for all platforms by the bot's wiring (start.ts) and the
 * delivery loop it drives (src/queue/delivery.ts), see docs/architecture.md.
 */

/** What was sent (message ids...), recorded with the job when it is marked delivered. */
export type DeliveryReceipt = Record<string, unknown>;

export interface PlatformAdapter {
  readonly platform: Platform;
  /**
   * Posts the progress message of a job just accepted (render it with renderProgress), the message its
   * reply later replaces. Delivery of the job waits until this returns. Throwing is logged and the reply
   * still comes, as a new message, unless `unannounceable` says nobody could ever see it.
   */
  announce(job: JobRecord, progress: JobProgress): Promise<void>;
  /**
   * When posting in the job's channel failed for a reason retrying cannot fix (the bot may not post there):
   * the platform's error code and the sentence for the person who asked; the job is then cancelled. Null
   * for other errors.
   */
  unannounceable?(error: unknown): { code: string; message: string } | null;
  /**
   * Sends the reply of a finished (completed or failed) chat, imagine or find job; render it with
   * renderReply. Called once per job under a delivery claim; throwing leaves it to be retried. When
   * `claim.redelivery` is set, an earlier attempt may have posted some or all of the reply before it
   * died: the adapter must not post those parts again. `claim.confirm()` is called before posting each
   * part (it throws when another process took the delivery over).
   */
  deliver(job: JobRecord, claim?: HeldClaim): Promise<DeliveryReceipt>;
  /**
   * When delivering kept failing (src/queue/delivery.ts, MAX_DELIVERY_ATTEMPTS): one text-only message
   * telling the person who asked that their reply could not be posted.
   */
  giveUp?(job: JobRecord, text: string): Promise<DeliveryReceipt>;
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
   * Runs `show` for the job now, after an update in flight and before any waiting one, and rejects with
   * its error (the first progress message, whose failure the caller handles). Nothing once settled.
   */
  runNow(job: JobRecord, show: () => Promise<void>): Promise<void>;
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
    async runNow(job, show) {
      if (settled.has(job.id)) return;
      const slot = slots.get(job.id) ?? { lastAt: 0 };
      slots.set(job.id, slot);
      while (slot.inFlight) await slot.inFlight;
      const shown = show();
      slot.inFlight = shown
        .catch(() => {})
        .finally(() => {
          // Counted from its end: its request may have waited in the client before reaching the platform.
          slot.lastAt = Date.now();
          slot.inFlight = undefined;
          if (slot.pending) schedule(job.id, slot);
        });
      await shown;
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
