import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import type { JobPayload, JobResult } from '../src/jobs.ts';
import { BullJobQueue } from '../src/queue/bullmq.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import type { JobQueue } from '../src/queue/queue.ts';
import { checkRedis } from '../src/queue/redis.ts';

/**
 * Queue overhead with a no-op engine, for both queues:
 *   - enqueue→start latency: one job at a time into an idle worker, from add() to the processor starting;
 *   - throughput: a burst of jobs through one worker at concurrency 1 (the engine worker's setting).
 * npm run bench:queue [-- --latency-jobs 500 --burst-jobs 2000 --redis redis://127.0.0.1:6379]
 * Ends with one JSON line holding the figures.
 */

const { values } = parseArgs({
  options: {
    'latency-jobs': { type: 'string', default: '500' },
    'burst-jobs': { type: 'string', default: '2000' },
    redis: { type: 'string', default: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379' },
  },
});
const latencyJobs = Number(values['latency-jobs']);
const burstJobs = Number(values['burst-jobs']);

const payload: JobPayload = { kind: 'imagine', community: { platform: 'cli', externalId: 'bench' }, prompt: 'noop' };
const result: JobResult = { kind: 'imagine', text: '', images: [], decision: null, notes: [] };

interface Figures {
  p50Ms: number;
  p95Ms: number;
  meanMs: number;
  jobsPerSec: number;
  latencyJobs: number;
  burstJobs: number;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

const round = (n: number, digits = 3) => Number(n.toFixed(digits));

async function measure(queue: JobQueue): Promise<Figures> {
  const addedAt = new Map<string, number>();
  const latencies: number[] = [];
  let onDone: (() => void) | undefined;
  let remaining = 0;
  const handle = queue.process(async (job) => {
    const added = addedAt.get(job.id);
    if (added !== undefined) latencies.push(performance.now() - added);
    remaining -= 1;
    if (remaining === 0) queueMicrotask(() => onDone?.());
    return result;
  });
  const run = async (count: number, record: boolean) => {
    const done = new Promise<void>((resolve) => {
      onDone = resolve;
    });
    remaining = count;
    for (let i = 0; i < count; i++) {
      const id = randomUUID();
      if (record) addedAt.set(id, performance.now());
      await queue.add({ id, payload });
    }
    await done;
  };

  // Warm-up, then one job at a time into an idle worker.
  for (let i = 0; i < 20; i++) await run(1, false);
  for (let i = 0; i < latencyJobs; i++) await run(1, true);
  addedAt.clear();
  const started = performance.now();
  await run(burstJobs, false);
  const seconds = (performance.now() - started) / 1000;
  await handle.close();

  const sorted = [...latencies].sort((a, b) => a - b);
  return {
    p50Ms: round(percentile(sorted, 50)),
    p95Ms: round(percentile(sorted, 95)),
    meanMs: round(sorted.reduce((sum, x) => sum + x, 0) / sorted.length),
    jobsPerSec: round(burstJobs / seconds, 1),
    latencyJobs,
    burstJobs,
  };
}

function print(name: string, figures: Figures | null, why?: string) {
  if (!figures) {
    console.log(`${name.padEnd(8)} skipped: ${why}`);
    return;
  }
  console.log(
    `${name.padEnd(8)} enqueue→start p50 ${figures.p50Ms.toFixed(3)} ms  p95 ${figures.p95Ms.toFixed(3)} ms  ` +
      `mean ${figures.meanMs.toFixed(3)} ms  (${latencyJobs} jobs)   throughput ${figures.jobsPerSec} jobs/s (${burstJobs} jobs, concurrency 1)`,
  );
}

const memory = await measure(new MemoryJobQueue());
print('memory', memory);

let bullmq: Figures | null = null;
let skipped: string | undefined;
try {
  await checkRedis(values.redis);
  const prefix = `gillbench-${Date.now().toString(36)}`;
  const queue = new BullJobQueue({ redisUrl: values.redis, prefix, keepFinishedSeconds: 60 });
  await queue.ready();
  try {
    bullmq = await measure(queue);
  } finally {
    await queue.close();
    const redis = new Redis(values.redis);
    const keys = await redis.keys(`${prefix}*`);
    if (keys.length) await redis.del(...keys);
    redis.disconnect();
  }
} catch (error) {
  skipped = error instanceof Error ? error.message : String(error);
}
print('bullmq', bullmq, skipped);

console.log(JSON.stringify({ bench: 'queue', memory, bullmq, ...(skipped ? { bullmqSkipped: skipped } : {}) }));
