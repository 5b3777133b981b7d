import { type Job, Queue, QueueEvents, UnrecoverableError, WaitingError, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import type { JobPayload, JobProgress, JobResult } from '../jobs.ts';
import type { Logger } from '../log.ts';
import {
  JobCancelledError,
  type JobFailure,
  judgeFailure,
  QueueUnavailableError,
  WorkerShutdownError,
} from './errors.ts';
import {
  communityKey,
  type Lane,
  laneOf,
  laneScores,
  priorityOf,
  START_SCRIPT,
  TAG_SCRIPT,
  tagOf,
} from './fair.ts';
import { QueueListeners } from './listeners.ts';
import type {
  JobPresence,
  JobProcessor,
  JobQueue,
  QueuedJob,
  QueueEvent,
  WorkerHandle,
  WorkerOptions,
} from './queue.ts';
import { checkRedis, consumerConnectionOptions, producerConnection, redactRedisUrl } from './redis.ts';

/**
 * The distributed queue: BullMQ on Redis. The BullMQ job id is the store's job id, so adding it twice is a
 * no-op. Jobs start in fair order across communities, user requests before indexing: each add takes a
 * tag from a clock kept in Redis (fair.ts) and becomes a BullMQ priority. Progress travels through job.updateProgress and reaches every subscriber through QueueEvents.
 *
 * Cancellation across processes: BullMQ 6.7 aborts a running job only from inside the worker process
 * that runs it (Worker.cancelJob), so a cancel is a Redis pub/sub message every worker listens to, plus
 * a marker key that covers the moment between a worker taking the job and starting it. A waiting job
 * is simply removed.
 *
 * Locks: BullMQ renews a running job's lock from a timer on the worker's event loop. onnxruntime-node's
 * session.run() is synchronous on the calling thread (it only defers the call with setImmediate), so
 * inference on the event loop would starve the renewal, the job would be taken for stalled and run
 * twice. The engine worker therefore runs the engine in a worker thread (engine-thread.ts) and keeps
 * this event loop free; lockDuration stays configurable for tests.
 */

export interface BullJobQueueOptions {
  redisUrl: string;
  queueName?: string;
  /** Redis key prefix; tests use a unique one per run. */
  prefix?: string;
  /** Runs per job, the first included. */
  attempts?: number;
  /** First retry delay; doubled for every further attempt. */
  backoffMs?: number;
  lockDurationMs?: number;
  stalledIntervalMs?: number;
  /** Times a job may be recovered from a dead worker before it fails. */
  maxStalledCount?: number;
  /** How long finished jobs stay in Redis (so a duplicate add stays a no-op). */
  keepFinishedSeconds?: number;
  logger?: Logger;
}

interface JobData {
  payload: JobPayload;
}

/** Prefix of failure reasons meant for the user; BullMQ carries one string per failure. */
const USER_FACING = 'user-facing: ';
/** How long past the grace period a worker's close may take before its connections are cut. */
const HARD_STOP_MS = 5000;

export function encodeFailure(failure: JobFailure): string {
  return failure.userFacing ? `${USER_FACING}${failure.message}` : failure.message;
}

export function decodeFailure(reason: string): JobFailure {
  return reason.startsWith(USER_FACING)
    ? { message: reason.slice(USER_FACING.length), userFacing: true }
    : { message: reason, userFacing: false };
}

/**
 * Jobs ahead of one: BullMQ takes the wait list (jobs without a priority, pushed on the left and taken
 * from the right) before the prioritized set (by score). A delayed job (a retry) counts behind all.
 * KEYS: wait, prioritized, delayed.
 */
const POSITION_SCRIPT = `
local rank = redis.call('ZRANK', KEYS[2], ARGV[1])
if rank then return redis.call('LLEN', KEYS[1]) + rank end
local pos = redis.call('LPOS', KEYS[1], ARGV[1])
if pos then return redis.call('LLEN', KEYS[1]) - 1 - pos end
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  return redis.call('LLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])
end
return -1`;

/** Takes the lease when free or renews it for its holder. KEYS: the lease; ARGV: owner, ttl in ms. */
const HOLD_LEASE_SCRIPT = `
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1`;

const RELEASE_LEASE_SCRIPT = `
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0`;

/** Checks that Redis answers, then opens the queue: a clear error instead of a silent retry loop. */
export async function openBullJobQueue(options: BullJobQueueOptions): Promise<BullJobQueue> {
  await checkRedis(options.redisUrl);
  const queue = new BullJobQueue(options);
  await queue.ready();
  return queue;
}

export class BullJobQueue implements JobQueue {
  readonly kind = 'bullmq';
  private readonly name: string;
  private readonly prefix: string;
  private readonly control: Redis;
  private readonly queue: Queue<JobData, JobResult>;
  private events?: QueueEvents;
  private readonly listeners: QueueListeners;
  private readonly handles = new Set<WorkerHandle>();

  constructor(private readonly options: BullJobQueueOptions) {
    this.listeners = new QueueListeners(options.logger);
    this.name = options.queueName ?? 'gill-jobs';
    this.prefix = options.prefix ?? 'gill';
    this.control = producerConnection(options.redisUrl, options.logger);
    const keepSeconds = options.keepFinishedSeconds ?? 24 * 3600;
    this.queue = new Queue<JobData, JobResult>(this.name, {
      connection: this.control,
      prefix: this.prefix,
      defaultJobOptions: {
        attempts: options.attempts ?? 3,
        backoff: { type: 'exponential', delay: options.backoffMs ?? 2000 },
        removeOnComplete: { age: keepSeconds },
        removeOnFail: { age: keepSeconds },
      },
    });
    this.queue.on('error', (error) => this.options.logger?.warn({ err: error }, 'job queue error'));
  }

  /** Resolves once Redis answers and, if subscribed, once events are being read. */
  async ready(): Promise<void> {
    await this.queue.waitUntilReady();
    await this.events?.waitUntilReady();
  }

  async add(job: QueuedJob): Promise<void> {
    const lane = laneOf(job.payload);
    try {
      const tag = Number(
        await this.control.eval(
          TAG_SCRIPT,
          3,
          this.queue.toKey(job.id),
          this.clockKey(lane),
          this.queue.toKey('prioritized'),
          communityKey(job.payload),
          ...laneScores(lane),
        ),
      );
      if (tag < 0) return;
      await this.queue.add(
        job.payload.kind,
        { payload: job.payload },
        { jobId: job.id, priority: priorityOf(lane, tag) },
      );
    } catch (error) {
      throw this.unavailable('could not add the job', error);
    }
  }

  async position(jobId: string): Promise<number | null> {
    const result = await this.control.eval(
      POSITION_SCRIPT,
      3,
      this.queue.toKey('wait'),
      this.queue.toKey('prioritized'),
      this.queue.toKey('delayed'),
      jobId,
    );
    const position = Number(result);
    return position >= 0 ? position : null;
  }

  async depth(): Promise<Record<Lane, number>> {
    const counts = await Promise.all(
      (['user', 'index'] as const).map((lane) =>
        this.control.zcount(this.queue.toKey('prioritized'), ...laneScores(lane)),
      ),
    );
    // Jobs added without a priority (by an older version) are taken first, as user requests.
    const unprioritized = await this.control.llen(this.queue.toKey('wait'));
    return { user: counts[0]! + unprioritized, index: counts[1]! };
  }

  async presence(jobId: string): Promise<JobPresence> {
    let state: string;
    try {
      state = await this.queue.getJobState(jobId);
    } catch (error) {
      throw this.unavailable('could not look the job up', error);
    }
    if (state === 'unknown') return 'absent';
    return state === 'completed' || state === 'failed' ? 'finished' : 'held';
  }

  async holdLease(name: string, owner: string, ttlMs: number): Promise<boolean> {
    try {
      return (await this.control.eval(HOLD_LEASE_SCRIPT, 1, this.leaseKey(name), owner, ttlMs)) === 1;
    } catch (error) {
      throw this.unavailable('could not take a lease', error);
    }
  }

  async releaseLease(name: string, owner: string): Promise<void> {
    await this.control.eval(RELEASE_LEASE_SCRIPT, 1, this.leaseKey(name), owner);
  }

  async cancel(jobId: string): Promise<boolean> {
    // The marker first: a worker that takes the job from now on aborts it before starting.
    await this.control.set(this.cancelKey(jobId), '1', 'EX', 24 * 3600);
    const state = await this.queue.getJobState(jobId);
    if (state === 'waiting' || state === 'delayed' || state === 'prioritized') {
      if ((await this.queue.remove(jobId)) === 1) {
        await this.control.del(this.cancelKey(jobId));
        return true;
      }
      // Locked: a worker took it in the meantime; abort it there.
    } else if (state !== 'active') {
      await this.control.del(this.cancelKey(jobId));
      return false;
    }
    await this.control.publish(this.cancelChannel(), jobId);
    return true;
  }

  subscribe(listener: (event: QueueEvent) => void): () => void {
    const unsubscribe = this.listeners.add(listener);
    this.events ??= this.openEvents();
    return unsubscribe;
  }

  process(processor: JobProcessor, options: WorkerOptions = {}): WorkerHandle {
    const running = new Map<string, AbortController>();
    const subscriber = new Redis(this.options.redisUrl, { maxRetriesPerRequest: null });
    subscriber.on('error', (error) =>
      this.options.logger?.warn({ err: error }, 'Redis cancel channel error'),
    );
    subscriber.on('message', (_channel, jobId: string) => running.get(jobId)?.abort(new JobCancelledError()));
    const subscribed = subscriber.subscribe(this.cancelChannel());
    const worker = new Worker<JobData, JobResult>(
      this.name,
      (job, token) => this.runOne(job, token, processor, running),
      {
        connection: consumerConnectionOptions(this.options.redisUrl),
        prefix: this.prefix,
        concurrency: options.concurrency ?? 1,
        lockDuration: this.options.lockDurationMs ?? 60_000,
        stalledInterval: this.options.stalledIntervalMs ?? 30_000,
        maxStalledCount: this.options.maxStalledCount ?? 2,
      },
    );
    worker.on('error', (error) => this.options.logger?.warn({ err: error }, 'job worker error'));
    const graceMs = options.shutdownGraceMs ?? 30_000;
    let closing: Promise<void> | undefined;
    const handle: WorkerHandle = {
      close: () => {
        closing ??= (async () => {
          // worker.close() stops taking jobs at once and resolves when the running ones are done;
          // past the grace period they are aborted and put back in the queue for another worker.
          const grace = setTimeout(() => {
            for (const controller of running.values()) controller.abort(new WorkerShutdownError());
          }, graceMs);
          // The wait is bounded: after a Redis reconnect worker.close() can wait on a blocking read that
          // never returns, and a worker that cannot stop holds up a deploy. Its jobs are in the queue.
          let hardStop: NodeJS.Timeout | undefined;
          const stuck = new Promise<'stuck'>((resolve) => {
            hardStop = setTimeout(() => resolve('stuck'), graceMs + HARD_STOP_MS);
          });
          if ((await Promise.race([worker.close(running.size === 0), stuck])) === 'stuck') {
            this.options.logger?.warn('the job worker did not close in time; disconnecting it');
            await worker.disconnect().catch(() => {});
          }
          clearTimeout(hardStop);
          clearTimeout(grace);
          await subscribed.catch(() => {});
          subscriber.disconnect();
          this.handles.delete(handle);
        })();
        return closing;
      },
    };
    this.handles.add(handle);
    return handle;
  }

  async close(): Promise<void> {
    await Promise.all([...this.handles].map((handle) => handle.close()));
    this.listeners.clear();
    await this.events?.close();
    await this.queue.close();
    this.control.disconnect();
  }

  private async runOne(
    job: Job<JobData, JobResult>,
    token: string | undefined,
    processor: JobProcessor,
    running: Map<string, AbortController>,
  ): Promise<JobResult> {
    const id = job.id!;
    const controller = new AbortController();
    running.set(id, controller);
    const attempt = job.attemptsMade + 1;
    const maxAttempts = job.opts.attempts ?? 1;
    const lane = laneOf(job.data.payload);
    try {
      const cancelled = await this.control.eval(
        START_SCRIPT,
        2,
        this.cancelKey(id),
        this.clockKey(lane),
        tagOf(lane, job.priority) ?? -1,
      );
      if (cancelled) throw new JobCancelledError();
      return await processor(
        { id, payload: job.data.payload, attempt, maxAttempts, queuedAt: job.timestamp },
        {
          progress: (progress: JobProgress) => {
            job.updateProgress(progress).catch((error) => {
              this.options.logger?.warn({ err: error, jobId: id }, 'could not report progress');
            });
          },
          signal: controller.signal,
        },
      );
    } catch (error) {
      const verdict = judgeFailure(error, controller.signal, attempt, maxAttempts);
      if (verdict.kind === 'release') {
        await job.moveToWait(token);
        throw new WaitingError();
      }
      if (verdict.kind === 'retry') throw error;
      throw new UnrecoverableError(encodeFailure(verdict.failure));
    } finally {
      running.delete(id);
    }
  }

  private openEvents(): QueueEvents {
    const events = new QueueEvents(this.name, {
      connection: consumerConnectionOptions(this.options.redisUrl),
      prefix: this.prefix,
    });
    events.on('error', (error) => this.options.logger?.warn({ err: error }, 'job events error'));
    events.on('progress', ({ jobId, data }) => {
      this.listeners.emit({ type: 'progress', jobId, progress: data as JobProgress });
    });
    events.on('completed', ({ jobId, returnvalue }) => {
      this.listeners.emit({ type: 'completed', jobId, result: returnvalue as unknown as JobResult });
    });
    events.on('failed', ({ jobId, failedReason }) => {
      this.listeners.emit({ type: 'failed', jobId, error: decodeFailure(failedReason) });
    });
    return events;
  }

  private leaseKey(name: string): string {
    return `${this.prefix}:${this.name}:lease:${name}`;
  }

  private clockKey(lane: Lane): string {
    return `${this.prefix}:${this.name}:fair:${lane}`;
  }

  private cancelKey(jobId: string): string {
    return `${this.prefix}:${this.name}:cancelled:${jobId}`;
  }

  private cancelChannel(): string {
    return `${this.prefix}:${this.name}:cancel`;
  }

  private unavailable(what: string, error: unknown): Error {
    const reason = error instanceof Error ? error.message : String(error);
    return new QueueUnavailableError(
      `Job queue (Redis at ${redactRedisUrl(this.options.redisUrl)}) ${what}: ${reason}`,
      { cause: error },
    );
  }
}
