import type { JobProgress, ReplyTarget } from '../jobs.ts';
import type { Logger } from '../log.ts';
import type { GillMetrics } from '../metrics/metrics.ts';
import type { DeliveryClaim, JobRecord, Store } from '../store/types.ts';
import type { JobQueue } from './queue.ts';

/**
 * Delivers each finished job's reply once, from whichever bot process gets to it first. Triggers are the
 * queue's completed/failed events (fast path) and a periodic sweep of the store's undelivered jobs, which
 * covers events missed while a bot was down or a deliverer that crashed mid-delivery (its claim expires).
 * The store is the record of truth: the worker writes the outcome before the queue announces it, and a
 * delivery counts only once markDelivered has recorded it under this process's claim. The claim is
 * renewed while the delivery runs and confirmed before each part, so a slow delivery is not taken over,
 * and a process that lost its claim anyway (stalled past its lease) stops posting.
 *
 * A deliverer that dies after posting but before markDelivered leaves a reply the next claimant cannot
 * see in the store. A claim taken over from an earlier one says so (`redelivery`), and the adapter then
 * uses what its platform offers to avoid posting the same reply twice.
 *
 * The loop lives with the queue, not with the bots, because it needs nothing but the store, the queue's
 * events and the claim protocol: it is the same for every platform (and for the CLI platform the queue
 * tests use). What a platform adds (its adapter, progress throttling, announcements) arrives as one
 * Deliverer, so the dependency runs one way: bots → queue.
 */

/**
 * What the loop delivers through: the platform whose jobs it takes and how a reply is sent. The bots
 * build one from their platform adapter (src/bots/core/delivery.ts); tests and other callers give the
 * functions directly.
 */
export interface Deliverer {
  platform: ReplyTarget['platform'];
  /**
   * Posts the reply; returns what the platform gave back (message ids...). Calls `claim.confirm()` before
   * posting each part, so a process that lost its claim posts nothing more.
   */
  deliver(job: JobRecord, claim: HeldClaim): Promise<Record<string, unknown>>;
  /**
   * After MAX_DELIVERY_ATTEMPTS failed deliveries: tells the person who asked that the reply could not be
   * posted (`reason` says why), as simply as the platform allows. The job is then marked delivered.
   */
  giveUp?(job: JobRecord, claim: HeldClaim, reason: string): Promise<Record<string, unknown>>;
  onProgress?(job: JobRecord, progress: JobProgress): void | Promise<void>;
}

/** A delivery claim this process holds while it delivers, kept alive by a heartbeat. */
export interface HeldClaim extends DeliveryClaim {
  /**
   * Renews the claim now; throws DeliveryClaimLostError when another process took the job over (its
   * lease lapsed while this process was stalled) or it was delivered. Called before posting each part.
   */
  confirm(): Promise<void>;
}

export class DeliveryClaimLostError extends Error {
  constructor(jobId: string) {
    super(`the delivery claim of job ${jobId} was taken over; not posting more of its reply`);
    this.name = 'DeliveryClaimLostError';
  }
}

/**
 * Failed deliveries of one job (in this process) before the person who asked is told it failed. Tries
 * are spaced out (the sweep interval, doubled after each failure, at most 64 of them): with the default
 * 5 s sweep, an outage of the platform under about ten minutes still ends in the reply.
 */
export const MAX_DELIVERY_ATTEMPTS = 8;
const MAX_BACKOFF_SWEEPS = 64;

export interface DeliveryOptions extends Deliverer {
  store: Store;
  queue: JobQueue;
  /** This process's name in delivery claims (host:pid or similar, unique per process). */
  owner: string;
  /** How long a claim holds before another process may take over. */
  leaseMs?: number;
  sweepIntervalMs?: number;
  logger?: Logger;
  metrics?: GillMetrics;
}

export interface DeliveryHandle {
  /** One sweep now; resolves when the undelivered jobs found have been tried. */
  sweep(): Promise<void>;
  close(): Promise<void>;
}

const SWEEP_BATCH = 50;
const PROGRESS_CACHE = 1000;

export function startDelivery(options: DeliveryOptions): DeliveryHandle {
  const { store, queue, platform, owner, logger } = options;
  const leaseMs = options.leaseMs ?? 60_000;
  const inFlight = new Map<string, Promise<void>>();
  const sweepIntervalMs = options.sweepIntervalMs ?? 5000;
  /** Failed deliveries per job and when to try again: one that keeps failing ends with giveUp. */
  const failures = new Map<string, { count: number; retryAt: number }>();
  /** Records of jobs with progress under way, so progress events do not each read the store. */
  const progressRecords = new Map<string, Promise<JobRecord | null>>();
  let closed = false;

  const attempt = (jobId: string, known?: JobRecord): Promise<void> => {
    const running = inFlight.get(jobId);
    if (running) return running;
    const delivery = deliverOnce(jobId, known).finally(() => inFlight.delete(jobId));
    inFlight.set(jobId, delivery);
    return delivery;
  };

  const deliverOnce = async (jobId: string, known?: JobRecord): Promise<void> => {
    let claim: (HeldClaim & { release(): void }) | null = null;
    try {
      const job = known ?? (await store.jobs.get(jobId));
      if (!job || job.replyTarget.platform !== platform || job.deliveredAt) return;
      if (job.status !== 'completed' && job.status !== 'failed') return;
      const failed = failures.get(jobId);
      if (failed && Date.now() < failed.retryAt) return;
      const taken = await store.jobs.claimDelivery(jobId, owner, leaseMs);
      if (!taken) return;
      claim = holdClaim(jobId, taken);
      const givingUp = failed && failed.count >= MAX_DELIVERY_ATTEMPTS && options.giveUp;
      const receipt = givingUp
        ? await givingUp(job, claim, `the reply failed ${failed.count} times`)
        : await options.deliver(job, claim);
      await claim.confirm();
      await store.jobs.markDelivered(jobId, owner, receipt);
      failures.delete(jobId);
      options.metrics?.deliveries.inc({ platform, outcome: givingUp ? 'gave_up' : 'delivered' });
    } catch (error) {
      if (error instanceof DeliveryClaimLostError) {
        logger?.warn({ jobId }, error.message);
        return;
      }
      const count = (failures.get(jobId)?.count ?? 0) + 1;
      const backoff = sweepIntervalMs * Math.min(2 ** (count - 1), MAX_BACKOFF_SWEEPS);
      failures.set(jobId, { count, retryAt: Date.now() + backoff });
      if (failures.size > PROGRESS_CACHE) failures.delete(failures.keys().next().value!);
      // The claim lapses after leaseMs and a later sweep tries again.
      options.metrics?.deliveries.inc({ platform, outcome: 'failed' });
      logger?.error({ err: error, jobId, attempts: count }, 'delivery failed; will retry');
    } finally {
      claim?.release();
    }
  };

  /**
   * The claim while this process delivers: renewed every third of the lease, so a slow platform call (a
   * long Retry-After, a slow upload) never lets another process take the job over mid-reply; a renewal
   * that finds the claim gone makes every later confirm() throw.
   */
  const holdClaim = (jobId: string, taken: DeliveryClaim): HeldClaim & { release(): void } => {
    let lost = false;
    const renew = async () => {
      if (!lost && !(await store.jobs.renewDelivery(jobId, owner, leaseMs))) lost = true;
    };
    const heartbeat = setInterval(
      () => {
        renew().catch((error: unknown) => logger?.warn({ err: error, jobId }, 'delivery claim not renewed'));
      },
      Math.max(1, Math.floor(leaseMs / 3)),
    );
    heartbeat.unref();
    return {
      ...taken,
      async confirm() {
        await renew();
        if (lost) throw new DeliveryClaimLostError(jobId);
      },
      release: () => clearInterval(heartbeat),
    };
  };

  const progress = async (jobId: string, update: JobProgress): Promise<void> => {
    if (!options.onProgress) return;
    let record = progressRecords.get(jobId);
    if (!record) {
      record = store.jobs.get(jobId);
      progressRecords.set(jobId, record);
      // Bounded even when a job's final event was missed.
      if (progressRecords.size > PROGRESS_CACHE) progressRecords.delete(progressRecords.keys().next().value!);
    }
    const job = await record;
    if (job && job.replyTarget.platform === platform) await options.onProgress(job, update);
  };

  const unsubscribe = queue.subscribe((event) => {
    if (closed) return;
    if (event.type === 'progress') {
      progress(event.jobId, event.progress).catch((error) => {
        logger?.warn({ err: error, jobId: event.jobId }, 'progress update failed');
      });
      return;
    }
    progressRecords.delete(event.jobId);
    void attempt(event.jobId);
  });

  const runSweep = async (): Promise<void> => {
    try {
      const jobs = await store.jobs.listUndelivered(platform, SWEEP_BATCH);
      for (const job of jobs) {
        if (closed) break;
        await attempt(job.id, job);
      }
    } catch (error) {
      logger?.warn({ err: error }, 'delivery sweep failed');
    }
  };
  // Sweeps run one after another, so a sweep asked for now also sees what finished during the last one.
  let sweeps = Promise.resolve();
  let sweepsQueued = 0;
  const sweep = (): Promise<void> => {
    sweepsQueued += 1;
    sweeps = sweeps.then(runSweep).finally(() => {
      sweepsQueued -= 1;
    });
    return sweeps;
  };

  const timer = setInterval(() => {
    if (sweepsQueued === 0) void sweep();
  }, sweepIntervalMs);
  timer.unref();
  void sweep();

  return {
    sweep,
    close: async () => {
      closed = true;
      clearInterval(timer);
      unsubscribe();
      await sweeps;
      await Promise.all(inFlight.values());
    },
  };
}
