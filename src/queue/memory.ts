import type { JobResult } from '../jobs.ts';
import type { Logger } from '../log.ts';
import { backoffDelay, JobCancelledError, judgeFailure, WorkerShutdownError } from './errors.ts';
import { communityKey, FairClock, type Lane, laneOf, priorityOf } from './fair.ts';
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

/**
 * The in-process queue of the embedded mode, with the BullMQ queue's semantics: a job id is added once,
 * fair order across communities with user requests before indexing (fair.ts), retries with exponential
 * backoff, no retry for bad input, cancellation through the processor's AbortSignal, and a close() that
 * lets running jobs finish or puts them back at the front.
 * Nothing survives the process: at start, recoverUnfinished() re-enqueues what the store still holds.
 */

export interface MemoryQueueOptions {
  /** Runs per job, the first included. */
  attempts?: number;
  /** First retry delay; doubled for every further attempt. */
  backoffMs?: number;
  /** Finished job ids remembered so that a duplicate add stays a no-op. */
  keepFinished?: number;
  logger?: Logger;
}

type State = 'waiting' | 'delayed' | 'active' | 'completed' | 'failed' | 'cancelled';

interface Entry {
  job: QueuedJob;
  state: State;
  lane: Lane;
  /** Its fair-queuing tag (fair.ts). */
  tag: number;
  /** Start order: lower priority first, then lower seq (as BullMQ's priority score). */
  priority: number;
  seq: number;
  /** Runs started so far. */
  attempt: number;
  queuedAt: number;
  controller?: AbortController;
  /** The consumer running it, while active. */
  owner?: Consumer;
  retryTimer?: NodeJS.Timeout;
}

interface Consumer {
  processor: JobProcessor;
  concurrency: number;
  running: Set<Promise<void>>;
  closing: boolean;
}

export class MemoryJobQueue implements JobQueue {
  readonly kind = 'memory';
  private readonly attempts: number;
  private readonly backoffMs: number;
  private readonly keepFinished: number;
  private readonly entries = new Map<string, Entry>();
  private readonly finished: string[] = [];
  /** Waiting entries in start order. */
  private readonly waiting: Entry[] = [];
  private readonly clocks: Record<Lane, FairClock> = { user: new FairClock(), index: new FairClock() };
  private added = 0;
  private released = 0;
  private readonly listeners: QueueListeners;
  private readonly consumers = new Set<Consumer>();
  private readonly handles = new Set<WorkerHandle>();
  private dispatchScheduled = false;
  private closed = false;

  constructor(private readonly options: MemoryQueueOptions = {}) {
    this.listeners = new QueueListeners(options.logger);
    this.attempts = options.attempts ?? 3;
    this.backoffMs = options.backoffMs ?? 2000;
    this.keepFinished = options.keepFinished ?? 10_000;
  }

  async add(job: QueuedJob): Promise<void> {
    if (this.closed) throw new Error('The job queue is closed.');
    if (this.entries.has(job.id)) return;
    const lane = laneOf(job.payload);
    const idle = !this.waiting.some((entry) => entry.lane === lane);
    const tag = this.clocks[lane].tag(communityKey(job.payload), idle);
    const priority = priorityOf(lane, tag);
    const entry: Entry = {
      job,
      state: 'waiting',
      attempt: 0,
      queuedAt: Date.now(),
      lane,
      tag,
      priority,
      seq: ++this.added,
    };
    this.entries.set(job.id, entry);
    this.enqueue(entry);
  }

  async position(jobId: string): Promise<number | null> {
    const index = this.waiting.findIndex((entry) => entry.job.id === jobId);
    if (index >= 0) return index;
    // A job waiting out a retry delay is counted behind everything waiting now.
    return this.entries.get(jobId)?.state === 'delayed' ? this.waiting.length : null;
  }

  async depth(): Promise<Record<Lane, number>> {
    const depth = { user: 0, index: 0 };
    for (const entry of this.waiting) depth[entry.lane] += 1;
    return depth;
  }

  async presence(jobId: string): Promise<JobPresence> {
    const state = this.entries.get(jobId)?.state;
    if (!state) return 'absent';
    return state === 'waiting' || state === 'delayed' || state === 'active' ? 'held' : 'finished';
  }

  /** One process owns this queue: its lease is always held. */
  async holdLease(): Promise<boolean> {
    return true;
  }

  async releaseLease(): Promise<void> {}

  async cancel(jobId: string): Promise<boolean> {
    const entry = this.entries.get(jobId);
    if (!entry) return false;
    switch (entry.state) {
      case 'waiting':
        this.waiting.splice(this.waiting.indexOf(entry), 1);
        this.finish(entry, 'cancelled');
        return true;
      case 'delayed':
        clearTimeout(entry.retryTimer);
        this.finish(entry, 'cancelled');
        return true;
      case 'active':
        entry.controller?.abort(new JobCancelledError());
        return true;
      default:
        return false;
    }
  }

  subscribe(listener: (event: QueueEvent) => void): () => void {
    return this.listeners.add(listener);
  }

  process(processor: JobProcessor, options: WorkerOptions = {}): WorkerHandle {
    const consumer: Consumer = {
      processor,
      concurrency: options.concurrency ?? 1,
      running: new Set(),
      closing: false,
    };
    const graceMs = options.shutdownGraceMs ?? 30_000;
    this.consumers.add(consumer);
    this.scheduleDispatch();
    let closing: Promise<void> | undefined;
    const handle: WorkerHandle = {
      close: () => {
        closing ??= (async () => {
          consumer.closing = true;
          const grace = setTimeout(() => this.abortRunning(consumer), graceMs);
          await Promise.all(consumer.running);
          clearTimeout(grace);
          this.consumers.delete(consumer);
          this.handles.delete(handle);
        })();
        return closing;
      },
    };
    this.handles.add(handle);
    return handle;
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.handles].map((handle) => handle.close()));
    for (const entry of this.entries.values()) clearTimeout(entry.retryTimer);
    this.listeners.clear();
  }

  private abortRunning(consumer: Consumer): void {
    for (const entry of this.entries.values()) {
      if (entry.state === 'active' && entry.owner === consumer) {
        entry.controller?.abort(new WorkerShutdownError());
      }
    }
  }

  private scheduleDispatch(): void {
    if (this.dispatchScheduled) return;
    this.dispatchScheduled = true;
    queueMicrotask(() => {
      this.dispatchScheduled = false;
      this.dispatch();
    });
  }

  private dispatch(): void {
    for (const consumer of this.consumers) {
      while (!consumer.closing && consumer.running.size < consumer.concurrency && this.waiting.length > 0) {
        const entry = this.waiting.shift()!;
        this.clocks[entry.lane].started(entry.tag);
        const run = this.run(consumer, entry).finally(() => {
          consumer.running.delete(run);
          this.scheduleDispatch();
        });
        consumer.running.add(run);
      }
    }
  }

  private async run(consumer: Consumer, entry: Entry): Promise<void> {
    const controller = new AbortController();
    entry.state = 'active';
    entry.attempt += 1;
    entry.controller = controller;
    entry.owner = consumer;
    const { id, payload } = entry.job;
    let result: JobResult;
    try {
      result = await consumer.processor(
        { id, payload, attempt: entry.attempt, maxAttempts: this.attempts, queuedAt: entry.queuedAt },
        {
          progress: (progress) => {
            if (entry.state === 'active') this.listeners.emit({ type: 'progress', jobId: id, progress });
          },
          signal: controller.signal,
        },
      );
    } catch (error) {
      const verdict = judgeFailure(error, controller.signal, entry.attempt, this.attempts);
      if (verdict.kind === 'release') {
        // Back to the front of its priority, as if never taken: the attempt does not count.
        entry.attempt -= 1;
        entry.seq = -++this.released;
        this.enqueue(entry);
      } else if (verdict.kind === 'retry') {
        this.options.logger?.warn({ jobId: id, attempt: entry.attempt, err: error }, 'job failed; retrying');
        entry.state = 'delayed';
        entry.retryTimer = setTimeout(
          () => {
            // Back with its priority, behind the jobs of equal priority.
            entry.seq = ++this.added;
            this.enqueue(entry);
          },
          backoffDelay(this.backoffMs, entry.attempt),
        );
      } else {
        this.finish(entry, controller.signal.reason instanceof JobCancelledError ? 'cancelled' : 'failed');
        this.listeners.emit({ type: 'failed', jobId: id, error: verdict.failure });
      }
      return;
    } finally {
      entry.controller = undefined;
      entry.owner = undefined;
    }
    this.finish(entry, 'completed');
    this.listeners.emit({ type: 'completed', jobId: id, result });
  }

  /** Inserts a waiting entry at its place in start order. */
  private enqueue(entry: Entry): void {
    entry.state = 'waiting';
    const before = (other: Entry) =>
      other.priority > entry.priority || (other.priority === entry.priority && other.seq > entry.seq);
    const index = this.waiting.findIndex(before);
    this.waiting.splice(index < 0 ? this.waiting.length : index, 0, entry);
    this.scheduleDispatch();
  }

  private finish(entry: Entry, state: 'completed' | 'failed' | 'cancelled'): void {
    entry.state = state;
    this.finished.push(entry.job.id);
    if (this.finished.length > this.keepFinished) this.entries.delete(this.finished.shift()!);
  }
}
