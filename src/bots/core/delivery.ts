import type { JobProgress } from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import type { GillMetrics } from '../../metrics/metrics.ts';
import { type Deliverer, type DeliveryHandle, startDelivery } from '../../queue/delivery.ts';
import type { JobQueue } from '../../queue/queue.ts';
import type { JobRecord, Store } from '../../store/types.ts';
import { type PlatformAdapter, type ProgressThrottle, throttleProgress } from './adapter.ts';
import { EtaEstimator } from './eta.ts';

/**
 * A platform adapter on the exactly-once delivery loop (src/queue/delivery.ts): progress throttled to one
 * update a second per job and settled before the final reply, so a late progress edit can never overwrite
 * it; the reply held until the job's progress message is posted; index jobs (no one waits for them)
 * recorded as delivered without a message. Every progress update carries an estimated end when there is
 * one, from the queue events this process has seen (see eta.ts).
 */

export interface AdapterDelivery extends DeliveryHandle {
  /**
   * Marks a turn whose job may be accepted: until the returned function is called, a delivery of that job
   * (by its idempotency key) waits, so the reply can't overtake the progress message still on its way.
   */
  hold(idempotencyKey: string): () => void;
  /**
   * Posts an accepted job's progress message (adapter.announce) in order with its other progress, then
   * keeps its queue position current until it starts. Rejects with the adapter's error.
   */
  announce(jobId: string, position: number | null): Promise<void>;
  /**
   * Turns a job cancelled through the core into `text` on its progress message, after any progress edit
   * in flight, and stops further progress edits for it.
   */
  cancelled(job: JobRecord, text: string): Promise<void>;
}

export interface AdapterDeliveryOptions {
  store: Store;
  queue: JobQueue;
  logger: Logger;
  adapter: PlatformAdapter;
  /** Unique per process (host:pid), the name in delivery claims. */
  owner: string;
  progressIntervalMs?: number;
  sweepIntervalMs?: number;
  /** How long a delivery claim holds before another process may take the job over. */
  leaseMs?: number;
  /** How often waiting jobs' queue positions are read again. */
  positionRefreshMs?: number;
  /** Learns run times from the queue's events; one of its own when not given. */
  estimator?: EtaEstimator;
  metrics?: GillMetrics;
}

/** Waiting jobs watched at most, so a queue that never drains cannot grow the map without bound. */
const MAX_WATCHED = 10_000;

/**
 * The first progress a job shows: its place in the queue, "next in line" when it already left the queue
 * (the worker's own progress replaces it as soon as it reports).
 */
function acceptedProgress(position: number | null): JobProgress {
  return { stage: 'queued', position: position ?? 0 };
}

/** Progress messages being posted, by the job's idempotency key: the job's delivery waits for them. */
class AnnouncementHolds {
  private readonly pending = new Map<string, Set<Promise<void>>>();

  hold(idempotencyKey: string): () => void {
    let release!: () => void;
    const done = new Promise<void>((resolve) => {
      release = resolve;
    });
    // A retry of the same event may be in flight at the same time: each keeps its own marker.
    const markers = this.pending.get(idempotencyKey) ?? new Set<Promise<void>>();
    markers.add(done);
    this.pending.set(idempotencyKey, markers);
    return () => {
      release();
      markers.delete(done);
      if (markers.size === 0 && this.pending.get(idempotencyKey) === markers)
        this.pending.delete(idempotencyKey);
    };
  }

  /** Resolves once no progress message of the job is being posted; true when it had to wait. */
  async settled(idempotencyKey: string): Promise<boolean> {
    const markers = this.pending.get(idempotencyKey);
    if (!markers) return false;
    await Promise.all(markers);
    return true;
  }
}

/** Feeds the queue's events (every platform's jobs: they all measure the same workers) to the estimator. */
function learnRunTimes(options: AdapterDeliveryOptions, estimator: EtaEstimator): () => void {
  const { store, logger } = options;
  return options.queue.subscribe((event) => {
    if (event.type === 'progress') return estimator.observe(event.jobId, event.progress);
    if (event.type === 'failed') return estimator.forget(event.jobId);
    const run = estimator.finish(event.jobId);
    if (!run) return;
    store.jobs
      .get(event.jobId)
      .then((job) => job && estimator.learn(job.kind, run))
      .catch((error: unknown) => logger.warn({ err: error, jobId: event.jobId }, 'run time not recorded'));
  });
}

/** Keeps waiting jobs' queue positions current on their progress messages until they start. */
class PositionWatch {
  /** Last position shown per waiting job (-1: none yet); a job leaves when the queue no longer has it waiting. */
  private readonly waiting = new Map<string, number>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly options: AdapterDeliveryOptions,
    private readonly throttle: ProgressThrottle,
  ) {
    this.timer = setInterval(() => this.refresh(), options.positionRefreshMs ?? 2000);
    this.timer.unref();
  }

  watch(jobId: string): void {
    this.waiting.set(jobId, -1);
    if (this.waiting.size > MAX_WATCHED) this.waiting.delete(this.waiting.keys().next().value as string);
  }

  forget(jobId: string): void {
    this.waiting.delete(jobId);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private refresh(): void {
    const { queue, store, logger } = this.options;
    for (const [jobId, last] of this.waiting) {
      queue
        .position(jobId)
        .then(async (position) => {
          if (position === null) return void this.waiting.delete(jobId);
          if (position === last) return;
          this.waiting.set(jobId, position);
          // A position read just before the job started must not replace its running progress.
          const job = await store.jobs.get(jobId);
          if (job?.status === 'queued') this.throttle.push(job, { stage: 'queued', position });
        })
        .catch((error: unknown) => logger.warn({ err: error, jobId }, 'queue position refresh failed'));
    }
  }
}

export function startAdapterDelivery(options: AdapterDeliveryOptions): AdapterDelivery {
  const { adapter, logger, store } = options;
  const estimator = options.estimator ?? new EtaEstimator();
  const unsubscribe = learnRunTimes(options, estimator);
  const holds = new AnnouncementHolds();
  const throttle = throttleProgress(
    // Read fresh: an earlier update may have recorded the progress message's id, or the job may have been
    // cancelled (from another bot process too), when its message must no longer show progress. The
    // estimate is made now, when the edit goes out, not when the update was offered.
    async (job, progress) => {
      const fresh = (await store.jobs.get(job.id)) ?? job;
      if (fresh.status !== 'cancelled') {
        await adapter.showProgress(fresh, progress, estimator.estimate(fresh, progress));
      }
    },
    (error, job) => logger.warn({ err: error, jobId: job.id }, 'progress update failed'),
    options.progressIntervalMs,
  );
  const positions = new PositionWatch(options, throttle);

  const deliverer: Deliverer = {
    platform: adapter.platform,
    async deliver(job, claim) {
      if (job.kind === 'index') return { silent: true };
      await holds.settled(job.idempotencyKey);
      await throttle.settle(job.id);
      // Read again: the progress message, progress edits and an earlier attempt's record of posted parts
      // may postdate `job`.
      return adapter.deliver((await store.jobs.get(job.id)) ?? job, claim);
    },
    async giveUp(job, _claim, reason) {
      logger.error({ jobId: job.id, reason }, 'giving up on delivering the reply');
      const text = 'Sorry, I could not post the answer to this request; please try again.';
      return adapter.giveUp ? adapter.giveUp(job, text) : { gaveUp: true };
    },
    onProgress(job, progress) {
      if (job.kind !== 'index') throttle.push(job, progress);
    },
  };
  const loop = startDelivery({
    ...deliverer,
    store,
    queue: options.queue,
    owner: options.owner,
    logger,
    sweepIntervalMs: options.sweepIntervalMs,
    leaseMs: options.leaseMs,
    metrics: options.metrics,
  });

  return {
    sweep: loop.sweep,
    hold: (key) => holds.hold(key),
    async announce(jobId, position) {
      const job = await store.jobs.get(jobId);
      if (!job || job.deliveredAt || job.status === 'cancelled') return;
      await throttle.runNow(job, () => adapter.announce(job, acceptedProgress(position)));
      positions.watch(jobId);
    },
    async cancelled(job, text) {
      positions.forget(job.id);
      estimator.forget(job.id);
      await throttle.settle(job.id);
      await adapter.showCancelled((await store.jobs.get(job.id)) ?? job, text);
    },
    async close() {
      positions.stop();
      unsubscribe();
      await loop.close();
      throttle.stop();
    },
  };
}
