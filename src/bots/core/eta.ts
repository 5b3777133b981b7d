import type { JobKind, JobProgress } from '../../jobs.ts';

/**
 * Estimates when a job will be done, from what this bot process has seen of the queue's events: a moving
 * average of run times per job kind (a run starts at its first progress event past the queue and ends
 * with its completed event), and for a job drawing, the time per diffusion step so far. A waiting job's
 * estimate is the jobs ahead of it (and the one running) worked through by the workers at the average
 * run time, plus its own kind's average. Nothing is estimated from constants: until a job of the kind
 * has been measured (or, while drawing, two steps have been timed), there is no estimate.
 */

export interface Eta {
  /** Epoch ms at which the job should be done. */
  at: number;
  /** Milliseconds from the estimate to `at`. */
  ms: number;
}

/** What a finished run measured, to be learned under its kind (known to the caller through the store). */
export interface MeasuredRun {
  /** From the first progress event past the queue to completion. */
  ms: number;
  /** From the last diffusion step to completion (encoding, storing), when the run drew. */
  tailMs?: number;
}

interface Tracked {
  startedAt?: number;
  /** The first and the latest diffusion step seen, with when they were reported. */
  firstStep?: { step: number; at: number };
  lastStep?: { step: number; at: number };
}

/** Jobs tracked at most, so runs whose end is never seen cannot grow the map without bound. */
const MAX_TRACKED = 10_000;

export class EtaEstimator {
  private readonly now: () => number;
  private readonly weight: number;
  private readonly concurrency: number;
  private readonly tracked = new Map<string, Tracked>();
  private readonly runMs = new Map<JobKind, number>();
  private readonly tailMs = new Map<JobKind, number>();
  /** Run time of any kind: what a job ahead of a waiting one (kind unknown) is expected to take. */
  private anyRunMs: number | null = null;

  constructor(
    options: {
      now?: () => number;
      /** Weight of a new run in the moving averages (0..1]. */
      weight?: number;
      /** Jobs the workers run at once, when known; otherwise taken as 1. */
      concurrency?: number;
    } = {},
  ) {
    this.now = options.now ?? Date.now;
    this.weight = options.weight ?? 0.3;
    this.concurrency = Math.max(1, options.concurrency ?? 1);
  }

  /** A progress event from the queue; call it when the event arrives (the clock reads the time). */
  observe(jobId: string, progress: JobProgress): void {
    if (progress.stage === 'queued') return;
    const at = this.now();
    let job = this.tracked.get(jobId);
    if (!job) {
      job = { startedAt: at };
      this.tracked.set(jobId, job);
      if (this.tracked.size > MAX_TRACKED) this.tracked.delete(this.tracked.keys().next().value as string);
    }
    if (progress.stage !== 'generating') return;
    const step = { step: progress.step, at };
    // A step count going back is a new image (a regeneration within the run): time it afresh.
    if (!job.firstStep || !job.lastStep || progress.step < job.lastStep.step) job.firstStep = step;
    job.lastStep = step;
  }

  /** The job completed: what its run measured, or null when its start was not seen here. */
  finish(jobId: string): MeasuredRun | null {
    const job = this.tracked.get(jobId);
    this.tracked.delete(jobId);
    if (job?.startedAt === undefined) return null;
    const at = this.now();
    return {
      ms: at - job.startedAt,
      ...(job.lastStep ? { tailMs: at - job.lastStep.at } : {}),
    };
  }

  /** The job failed or was cancelled: its run says nothing about how long runs take. */
  forget(jobId: string): void {
    this.tracked.delete(jobId);
  }

  /** Adds a measured run to its kind's averages. */
  learn(kind: JobKind, run: MeasuredRun): void {
    this.runMs.set(kind, this.average(this.runMs.get(kind), run.ms));
    if (run.tailMs !== undefined) this.tailMs.set(kind, this.average(this.tailMs.get(kind), run.tailMs));
    this.anyRunMs = this.average(this.anyRunMs ?? undefined, run.ms);
  }

  /** When the job should be done, or null without a measurement to go on (or when it is overdue). */
  estimate(job: { id: string; kind: JobKind }, progress: JobProgress): Eta | null {
    const now = this.now();
    const average = this.runMs.get(job.kind);
    let ms: number | null = null;
    if (progress.stage === 'queued') {
      // Every worker is busy while a job waits: it starts once the running jobs and those ahead are done.
      if (average !== undefined && this.anyRunMs !== null)
        ms = ((progress.position + 1) * this.anyRunMs) / this.concurrency + average;
    } else {
      const tracked = this.tracked.get(job.id);
      const first = tracked?.firstStep;
      const last = tracked?.lastStep;
      if (progress.stage === 'generating' && first && last && last.step > first.step) {
        const perStep = (last.at - first.at) / (last.step - first.step);
        const left = Math.max(0, progress.steps - progress.step);
        ms = perStep * left - (now - last.at) + (this.tailMs.get(job.kind) ?? 0);
      } else if (average !== undefined && tracked?.startedAt !== undefined) {
        ms = average - (now - tracked.startedAt);
      }
    }
    if (ms === null || !Number.isFinite(ms) || ms < 0) return null;
    return { at: now + ms, ms };
  }

  private average(previous: number | undefined, sample: number): number {
    return previous === undefined ? sample : previous + this.weight * (sample - previous);
  }
}
