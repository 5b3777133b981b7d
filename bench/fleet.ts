import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import pg from 'pg';
import type { Engine, JobPayload, JobResult } from '../src/jobs.ts';
import { createLogger } from '../src/log.ts';
import { BullJobQueue } from '../src/queue/bullmq.ts';
import { checkRedis } from '../src/queue/redis.ts';
import { submitJob } from '../src/queue/submit.ts';
import { serveJobs } from '../src/roles/worker.ts';
import { connect, type Store } from '../src/store/index.ts';

/**
 * A fleet of workers on one Redis (#14 §2): N worker processes (the real worker loop, `serveJobs` of
 * `gill worker`, with its store), each running a stand-in engine whose every job takes a fixed service
 * time (a sleep, as a GPU keeps the CPU free), fed by a producer that fills the queue.
 *   - throughput per N, scaling efficiency (jobs/s at N over N × jobs/s at 1) and the overhead per job
 *     (worker time per job beyond the service time: queue and store round trips), over the middle 80%
 *     of completions, every worker starting on a full queue;
 *   - fairness: community A submits 100 jobs, then B submits 5; B's waits (submit to start) with the fair
 *     queue, and side by side with A and B in one community, which is the first-come-first-served order
 *     the queue had before.
 * npm run bench:fleet [-- --workers 1,2,4,8,16 --service-ms 1000 --jobs-per-worker 25 --fair-workers 8,1]
 * Needs Redis (--redis, REDIS_URL) and Postgres (--database, DATABASE_URL or TEST_DATABASE_URL: a
 * scratch database is created next to it and dropped). Ends with one JSON line holding the figures.
 */

const { values: args } = parseArgs({
  options: {
    child: { type: 'boolean', default: false },
    workers: { type: 'string', default: '1,2,4,8,16' },
    'fair-workers': { type: 'string', default: '8,1' },
    // About one job of the committed tiny bundle (see src/roles/start.ts).
    'service-ms': { type: 'string', default: '1000' },
    'jobs-per-worker': { type: 'string', default: '25' },
    redis: { type: 'string', default: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379' },
    database: {
      type: 'string',
      default: process.env.DATABASE_URL ?? process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test',
    },
  },
});

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes. */
const now = () => performance.timeOrigin + performance.now();
const logger = createLogger('warn');

// ---------------------------------------------------------------------------------------------------
// A worker process: `tsx bench/fleet.ts --child` with FLEET_PREFIX, FLEET_DATABASE, FLEET_SERVICE_MS.
// ---------------------------------------------------------------------------------------------------

async function runChild(): Promise<void> {
  const report = (message: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(message)}\n`);
  const serviceMs = Number(process.env.FLEET_SERVICE_MS);
  const store = await connect({ DATABASE_URL: process.env.FLEET_DATABASE, dataDir: '.' }, { logger });
  const queue = new BullJobQueue({ redisUrl: args.redis, prefix: process.env.FLEET_PREFIX, logger });
  await queue.ready();
  const engine: Engine = {
    async run(payload, ctx): Promise<JobResult> {
      report({ started: payload.kind === 'imagine' ? payload.prompt : '', at: now() });
      await sleep(serviceMs, undefined, { signal: ctx.signal });
      report({ done: true, at: now() });
      return { kind: 'imagine', text: '', images: [], decision: null, notes: [] };
    },
    close: async () => {},
  };
  report({ ready: true });
  // Jobs are taken only once the parent says so, so that every worker starts on a full queue.
  await new Promise((resolve) => process.stdin.once('data', resolve));
  process.stdin.pause();
  const cpuAtStart = process.cpuUsage();
  await serveJobs({ queue, store, engine, logger, shutdownGraceMs: 1000 });
  const cpu = process.cpuUsage(cpuAtStart);
  report({ cpuMs: (cpu.user + cpu.system) / 1000 });
  await queue.close();
  await store.close();
}

// ---------------------------------------------------------------------------------------------------
// The parent: a scratch database, the workers, the producer.
// ---------------------------------------------------------------------------------------------------

interface Worker {
  process: ChildProcess;
  exited: Promise<void>;
}

type Event = { started: string; at: number } | { done: true; at: number };

class Fleet {
  readonly events: Event[] = [];
  /** CPU time each worker process spent from taking its first job to stopping. */
  readonly cpuMs: number[] = [];
  private readonly workers: Worker[] = [];

  constructor(
    readonly prefix: string,
    private readonly database: string,
    private readonly serviceMs: number,
  ) {}

  async start(count: number): Promise<void> {
    const ready: Promise<void>[] = [];
    for (let i = 0; i < count; i++) {
      const child = spawn(process.execPath, ['--import', 'tsx', 'bench/fleet.ts', '--child', '--redis', args.redis], {
        env: {
          ...process.env,
          FLEET_PREFIX: this.prefix,
          FLEET_DATABASE: this.database,
          FLEET_SERVICE_MS: String(this.serviceMs),
        },
        stdio: ['pipe', 'pipe', 'inherit'],
      });
      let buffer = '';
      let onReady!: () => void;
      ready.push(new Promise((resolve) => (onReady = resolve)));
      child.stdout!.on('data', (data: Buffer) => {
        buffer += data.toString();
        const lines = buffer.split('\n');
        buffer = lines.pop()!;
        for (const line of lines) {
          if (!line.startsWith('{')) continue;
          const message = JSON.parse(line);
          if (message.ready) onReady();
          else if ('cpuMs' in message) this.cpuMs.push(message.cpuMs);
          else this.events.push(message);
        }
      });
      const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
      void exited.then(() => onReady());
      this.workers.push({ process: child, exited });
    }
    await Promise.all(ready);
    if (this.workers.some((w) => w.process.exitCode !== null)) throw new Error('a worker process failed to start');
  }

  /** Lets every worker start taking jobs. */
  go(): void {
    for (const worker of this.workers) worker.process.stdin!.write('go\n');
  }

  async waitFor(test: (events: Event[]) => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!test(this.events)) {
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms`);
      await sleep(20);
    }
  }

  async stop(): Promise<void> {
    for (const worker of this.workers) if (worker.process.exitCode === null) worker.process.kill('SIGTERM');
    await Promise.all(this.workers.map((worker) => worker.exited));
  }
}

const imagine = (community: string, prompt: string): JobPayload => ({
  kind: 'imagine',
  community: { platform: 'cli', externalId: community },
  prompt,
});

let jobCount = 0;
async function submit(store: Store, queue: BullJobQueue, payload: JobPayload): Promise<void> {
  await submitJob(
    { store, queue },
    {
      idempotencyKey: `fleet-${++jobCount}-${randomUUID()}`,
      communityId: null,
      payload,
      replyTarget: { platform: 'cli', channelId: 'bench', data: {} },
    },
  );
}

const round = (n: number, digits = 1) => Number(n.toFixed(digits));

interface Throughput {
  workers: number;
  jobs: number;
  jobsPerSec: number;
  /** Worker time per job beyond the service time. */
  overheadMsPerJob: number;
  /** CPU time of the worker processes per job (the worker loop, BullMQ and pg clients). */
  workerCpuMsPerJob: number;
  /** Against N × the one-worker figure. */
  efficiency: number;
  /** Against N workers each doing nothing but the service time. */
  efficiencyVsIdeal: number;
}

async function measureThroughput(
  context: { store: Store; database: string; serviceMs: number },
  workers: number,
  jobsPerWorker: number,
): Promise<Omit<Throughput, 'efficiency'>> {
  const prefix = `gill-fleet-${randomUUID().slice(0, 8)}`;
  const fleet = new Fleet(prefix, context.database, context.serviceMs);
  const queue = new BullJobQueue({ redisUrl: args.redis, prefix, logger });
  try {
    await queue.ready();
    await fleet.start(workers);
    const jobs = Math.max(40, workers * jobsPerWorker);
    for (let i = 0; i < jobs; i++) await submit(context.store, queue, imagine(`c${i % 10}`, `t${i}`));
    fleet.go();
    const done = () => fleet.events.filter((e) => 'done' in e);
    await fleet.waitFor(() => done().length >= jobs, jobs * context.serviceMs * 4 + 60_000);
    // The middle 80% of completions: past the ramp-up, before the last workers run dry.
    const ends = done()
      .map((e) => e.at)
      .sort((a, b) => a - b);
    const [from, to] = [Math.floor(jobs * 0.1), Math.floor(jobs * 0.9)];
    const jobsPerSec = ((to - from) / (ends[to]! - ends[from]!)) * 1000;
    await fleet.stop();
    return {
      workers,
      jobs,
      jobsPerSec: round(jobsPerSec, 2),
      overheadMsPerJob: round((workers / jobsPerSec) * 1000 - context.serviceMs, 2),
      workerCpuMsPerJob: round(fleet.cpuMs.reduce((sum, ms) => sum + ms, 0) / jobs, 2),
      efficiencyVsIdeal: round(jobsPerSec / (workers * (1000 / context.serviceMs)), 3),
    };
  } finally {
    await fleet.stop();
    await queue.close();
    await dropKeys(prefix);
  }
}

interface Fairness {
  workers: number;
  /** Waits of B's five jobs, submit to start, in ms and in service times. */
  fairWaitsMs: number[];
  fairWaitsInServiceTimes: number[];
  /** The same with A and B in one community: first come, first served. */
  fifoWaitsMs: number[];
  fifoWaitsInServiceTimes: number[];
}

async function measureFairness(
  context: { store: Store; database: string; serviceMs: number },
  workers: number,
): Promise<Fairness> {
  const run = async (fair: boolean) => {
    const prefix = `gill-fleet-${randomUUID().slice(0, 8)}`;
    const fleet = new Fleet(prefix, context.database, context.serviceMs);
    const queue = new BullJobQueue({ redisUrl: args.redis, prefix, logger });
    try {
      await queue.ready();
      await fleet.start(workers);
      for (let i = 0; i < 100; i++) await submit(context.store, queue, imagine('a', `a${i}`));
      fleet.go();
      const starts = () => fleet.events.filter((e): e is { started: string; at: number } => 'started' in e);
      // B arrives once the fleet is at work on A's backlog.
      await fleet.waitFor(() => starts().length >= workers, 60_000);
      const submitted = new Map<string, number>();
      for (let i = 0; i < 5; i++) {
        submitted.set(`b${i}`, now());
        await submit(context.store, queue, imagine(fair ? 'b' : 'a', `b${i}`));
      }
      await fleet.waitFor(
        () => starts().filter((e) => submitted.has(e.started)).length === 5,
        (105 / workers) * context.serviceMs * 4 + 60_000,
      );
      return starts()
        .filter((e) => submitted.has(e.started))
        .map((e) => round(e.at - submitted.get(e.started)!, 0));
    } finally {
      await fleet.stop();
      await queue.close();
      await dropKeys(prefix);
    }
  };
  const fairWaitsMs = await run(true);
  const fifoWaitsMs = await run(false);
  const inService = (waits: number[]) => waits.map((w) => round(w / context.serviceMs, 2));
  return {
    workers,
    fairWaitsMs,
    fairWaitsInServiceTimes: inService(fairWaitsMs),
    fifoWaitsMs,
    fifoWaitsInServiceTimes: inService(fifoWaitsMs),
  };
}

async function dropKeys(prefix: string): Promise<void> {
  const redis = new Redis(args.redis);
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    if (keys.length) await redis.del(...keys);
    cursor = next;
  } while (cursor !== '0');
  redis.disconnect();
}

async function scratchDatabase(): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `gill_bench_fleet_${Date.now().toString(36)}`;
  const admin = async (sql: string) => {
    const client = new pg.Client({ connectionString: args.database });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  };
  await admin(`CREATE DATABASE ${name}`);
  const url = new URL(args.database);
  url.pathname = `/${name}`;
  return { url: url.toString(), drop: () => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}

async function main(): Promise<void> {
  const serviceMs = Number(args['service-ms']);
  const jobsPerWorker = Number(args['jobs-per-worker']);
  const counts = args.workers.split(',').map(Number).filter((n) => n > 0);
  const fairCounts = args['fair-workers'].split(',').map(Number).filter((n) => n > 0);
  await checkRedis(args.redis);
  const database = await scratchDatabase();
  const store = await connect({ DATABASE_URL: database.url, dataDir: '.' }, { logger });
  const context = { store, database: database.url, serviceMs };
  try {
    console.log(`Fleet of workers on one Redis; stand-in engine with a ${serviceMs} ms service time.\n`);
    const measured: Omit<Throughput, 'efficiency'>[] = [];
    for (const workers of counts) measured.push(await measureThroughput(context, workers, jobsPerWorker));
    const single = measured.find((m) => m.workers === 1)?.jobsPerSec ?? 1000 / serviceMs;
    const throughput: Throughput[] = measured.map((m) => ({
      ...m,
      efficiency: round(m.jobsPerSec / (m.workers * single), 3),
    }));
    console.log('workers  jobs  jobs/s   efficiency  vs ideal  overhead ms/job  worker CPU ms/job');
    for (const t of throughput) {
      console.log(
        `${String(t.workers).padStart(7)}  ${String(t.jobs).padStart(4)}  ${t.jobsPerSec.toFixed(2).padStart(6)}   ${(t.efficiency * 100).toFixed(1).padStart(9)}%  ${(t.efficiencyVsIdeal * 100).toFixed(1).padStart(7)}%  ${t.overheadMsPerJob.toFixed(2).padStart(15)}  ${t.workerCpuMsPerJob.toFixed(2).padStart(17)}`,
      );
    }
    const fairness: Fairness[] = [];
    for (const workers of fairCounts) fairness.push(await measureFairness(context, workers));
    console.log('\nA submits 100 jobs, then B submits 5: waits of B\'s jobs, submit to start, in service times');
    for (const f of fairness) {
      console.log(`  ${f.workers} worker(s), fair queue:              ${f.fairWaitsInServiceTimes.join(', ')}`);
      console.log(`  ${f.workers} worker(s), one community (FIFO):   ${f.fifoWaitsInServiceTimes.join(', ')}`);
    }
    const atMost = counts.at(-1)!;
    const last = throughput.find((t) => t.workers === atMost)!;
    console.log(
      `\nEfficiency at ${atMost} workers: ${(last.efficiency * 100).toFixed(1)}% (target ≥ 90%).`,
    );
    console.log(
      JSON.stringify({ bench: 'fleet', serviceMs, throughput, fairness, target: { efficiencyAt16: 0.9 } }),
    );
  } finally {
    await store.close();
    await database.drop();
  }
}

if (args.child) await runChild();
else await main();
