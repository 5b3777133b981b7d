import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { JobPayload } from '../jobs.ts';
import type { Lane } from '../queue/fair.ts';

/**
 * What an operator watches (#14 §4), in Prometheus form: one registry per process, served on /metrics
 * by server.ts. Labels stay few and bounded: the job kind, the lane, the community class (the platform:
 * a label per community would grow without bound) and outcomes.
 */

export type CommunityClass = JobPayload['community']['platform'];

export function communityClassOf(payload: JobPayload): CommunityClass {
  return payload.community.platform;
}

/** Seconds, from tens of milliseconds (a retrieval) to minutes (a long queue, a large model). */
const SECONDS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export interface GillMetrics {
  readonly registry: Registry;
  /** Jobs waiting per lane, read from the queue at each scrape (setQueueDepthSource). */
  readonly queueDepth: Gauge<'lane'>;
  /** From being added to the queue to starting, first attempts only. */
  readonly waitSeconds: Histogram<'kind' | 'community_class'>;
  /** The engine's run time per job. */
  readonly runSeconds: Histogram<'kind' | 'outcome'>;
  /** Jobs failed for good, by reason: user_input, error, cancelled, lost (reconciler). */
  readonly failures: Counter<'kind' | 'reason'>;
  /** Runs that failed and will run again. */
  readonly retries: Counter<'kind'>;
  /** Jobs the reconciler added to the queue again. */
  readonly requeued: Counter;
  /** Replies delivered, by platform and outcome (delivered, failed, gave_up: the asker told the reply failed). */
  readonly deliveries: Counter<'platform' | 'outcome'>;
  /** How long loading a model took, by model part. */
  readonly modelLoadSeconds: Gauge<'part'>;
  /** Requests refused by a limit (user_concurrent, community_concurrent, per_minute) and images not indexed by one (index_pending, index_per_minute). */
  readonly rateLimitRefusals: Counter<'limit'>;
  /** Reads the queue depth per lane at each scrape. */
  setQueueDepthSource(source: () => Promise<Record<Lane, number>>): void;
}

export function createMetrics(options: { role: string; defaultMetrics?: boolean }): GillMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ role: options.role });
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  let depthSource: (() => Promise<Record<Lane, number>>) | undefined;
  const registers = [registry];
  return {
    registry,
    queueDepth: new Gauge({
      name: 'gill_queue_depth',
      help: 'Jobs waiting in the queue, per lane (user requests, index jobs).',
      labelNames: ['lane'],
      registers,
      async collect() {
        if (!depthSource) return;
        // A queue that cannot answer leaves the series out rather than failing the whole scrape.
        const depth = await depthSource().catch(() => null);
        if (!depth) return this.reset();
        for (const [lane, count] of Object.entries(depth)) this.set({ lane }, count);
      },
    }),
    waitSeconds: new Histogram({
      name: 'gill_job_wait_seconds',
      help: 'Time from a job being queued to a worker starting it (first attempt).',
      labelNames: ['kind', 'community_class'],
      buckets: SECONDS,
      registers,
    }),
    runSeconds: new Histogram({
      name: 'gill_job_run_seconds',
      help: 'Time the engine spent on a job.',
      labelNames: ['kind', 'outcome'],
      buckets: SECONDS,
      registers,
    }),
    failures: new Counter({
      name: 'gill_job_failures_total',
      help: 'Jobs failed for good, by reason (user_input, error, cancelled, lost).',
      labelNames: ['kind', 'reason'],
      registers,
    }),
    retries: new Counter({
      name: 'gill_job_retries_total',
      help: 'Job runs that failed and are retried.',
      labelNames: ['kind'],
      registers,
    }),
    requeued: new Counter({
      name: 'gill_jobs_requeued_total',
      help: 'Unfinished jobs the reconciler found missing from the queue and added again.',
      registers,
    }),
    deliveries: new Counter({
      name: 'gill_deliveries_total',
      help: 'Replies delivered to the platforms, by outcome.',
      labelNames: ['platform', 'outcome'],
      registers,
    }),
    modelLoadSeconds: new Gauge({
      name: 'gill_model_load_seconds',
      help: 'How long loading each part of the model took.',
      labelNames: ['part'],
      registers,
    }),
    rateLimitRefusals: new Counter({
      name: 'gill_rate_limit_refusals_total',
      help: 'Requests refused by a limit (user_concurrent, community_concurrent, per_minute), and images not indexed by one (index_pending, index_per_minute).',
      labelNames: ['limit'],
      registers,
    }),
    setQueueDepthSource(source) {
      depthSource = source;
    },
  };
}
