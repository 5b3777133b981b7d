import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { createLogger } from '../src/log.ts';
import { BullJobQueue } from '../src/queue/bullmq.ts';
import { startDelivery } from '../src/queue/delivery.ts';
import { JobCancelledError } from '../src/queue/errors.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import type { JobProcessor, JobQueue, QueueEvent } from '../src/queue/queue.ts';
import { recoverUnfinished } from '../src/queue/recover.ts';
import { cancelJob, submitJob } from '../src/queue/submit.ts';
import { runJobs } from '../src/queue/worker.ts';
import { connect, type JobRecord, type Store } from '../src/store/index.ts';
import {
  FakeEngine,
  type FakeScript,
  fakeIndexPayload,
  fakePayload,
  fakeResult,
  scriptOf,
} from './support/fake-engine.ts';
import {
  createTempDatabase,
  probePostgres,
  probeRedis,
  serviceAvailable,
  TEST_REDIS_URL,
} from './support/services.ts';

/**
 * One contract, two queues: every test here runs against the in-process queue and against BullMQ on a
 * real Redis (unique key prefix per run).
 */

const RUN = `gilltest-${Date.now().toString(36)}-${randomUUID().slice(0, 6)}`;
const redisUp = await serviceAvailable('Redis (BullMQ queue contract)', () => probeRedis());

interface QueueSettings {
  attempts?: number;
  backoffMs?: number;
}

interface Harness {
  kind: 'memory' | 'bullmq';
  open(settings?: QueueSettings): Promise<JobQueue>;
}

const opened: JobQueue[] = [];
let prefixes = 0;

const harnesses: Harness[] = [
  {
    kind: 'memory',
    async open(settings = {}) {
      const queue = new MemoryJobQueue({
        attempts: settings.attempts ?? 3,
        backoffMs: settings.backoffMs ?? 50,
      });
      opened.push(queue);
      return queue;
    },
  },
  {
    kind: 'bullmq',
    async open(settings = {}) {
      const queue = new BullJobQueue({
        redisUrl: TEST_REDIS_URL,
        prefix: `${RUN}-${++prefixes}`,
        attempts: settings.attempts ?? 3,
        backoffMs: settings.backoffMs ?? 50,
        lockDurationMs: 2000,
        stalledIntervalMs: 1000,
      });
      opened.push(queue);
      await queue.ready();
      return queue;
    },
  },
];

afterAll(async () => {
  await Promise.all(opened.map((queue) => queue.close()));
  if (!redisUp) return;
  const redis = new Redis(TEST_REDIS_URL);
  const keys = await redis.keys(`${RUN}*`);
  if (keys.length) await redis.del(...keys);
  redis.disconnect();
});

/** Subscribes and, for BullMQ, waits until events are being read, so none is missed. */
async function listen(queue: JobQueue) {
  const events: QueueEvent[] = [];
  const off = queue.subscribe((event) => events.push(event));
  if (queue instanceof BullJobQueue) await queue.ready();
  const waitFor = (jobId: string, type: QueueEvent['type']) =>
    vi.waitFor(
      () => {
        const found = events.find((event) => event.jobId === jobId && event.type === type);
        if (!found) throw new Error(`no ${type} event for ${jobId} yet`);
        return found;
      },
      { timeout: 10_000, interval: 10 },
    );
  return { events, off, waitFor };
}

const engineProcessor =
  (engine: FakeEngine): JobProcessor =>
  (job, ctx) =>
    engine.run(job.payload, ctx);

for (const harness of harnesses) {
  describe.skipIf(harness.kind === 'bullmq' && !redisUp)(`JobQueue contract: ${harness.kind}`, () => {
    it('adds a job id once: a duplicate add, even after completion, changes nothing', async () => {
      const queue = await harness.open();
      const { waitFor } = await listen(queue);
      const id = randomUUID();
      await queue.add({ id, payload: fakePayload({ tag: 'first' }) });
      await queue.add({ id, payload: fakePayload({ tag: 'second' }) });
      expect(await queue.position(id)).toBe(0);
      const engine = new FakeEngine();
      queue.process(engineProcessor(engine));
      const completed = await waitFor(id, 'completed');
      expect(completed).toMatchObject({ result: fakeResult({ tag: 'first' }) });
      await queue.add({ id, payload: fakePayload({ tag: 'third' }) });
      await sleep(300);
      expect(engine.runs.map((run) => run.tag)).toEqual(['first']);
    });

    it('keeps FIFO order, reports positions and cancels waiting jobs', async () => {
      const queue = await harness.open();
      const { waitFor } = await listen(queue);
      const [a, b, c] = [randomUUID(), randomUUID(), randomUUID()];
      for (const [id, tag] of [
        [a, 'a'],
        [b, 'b'],
        [c, 'c'],
      ] as const) {
        await queue.add({ id, payload: fakePayload({ tag }) });
      }
      expect([await queue.position(a), await queue.position(b), await queue.position(c)]).toEqual([0, 1, 2]);
      expect(await queue.cancel(b)).toBe(true);
      expect(await queue.cancel(b)).toBe(false);
      expect([await queue.position(a), await queue.position(b), await queue.position(c)]).toEqual([
        0,
        null,
        1,
      ]);
      const engine = new FakeEngine();
      queue.process(engineProcessor(engine));
      await waitFor(c, 'completed');
      expect(engine.runs.map((run) => run.tag)).toEqual(['a', 'c']);
      expect(await queue.position(a)).toBeNull();
    });

    it('takes turns across communities, each community in its own order', async () => {
      const queue = await harness.open();
      const { waitFor } = await listen(queue);
      const jobs: [string, string][] = [
        ['a1', 'a'],
        ['a2', 'a'],
        ['a3', 'a'],
        ['a4', 'a'],
        ['b1', 'b'],
        ['b2', 'b'],
        ['c1', 'c'],
      ];
      const ids = new Map(jobs.map(([tag]) => [tag, randomUUID()]));
      for (const [tag, community] of jobs) {
        await queue.add({ id: ids.get(tag)!, payload: fakePayload({ tag }, community) });
      }
      const order = ['a1', 'b1', 'c1', 'a2', 'b2', 'a3', 'a4'];
      const positions = await Promise.all(order.map((tag) => queue.position(ids.get(tag)!)));
      expect(positions).toEqual([0, 1, 2, 3, 4, 5, 6]);
      const engine = new FakeEngine();
      queue.process(engineProcessor(engine));
      await waitFor(ids.get('a4')!, 'completed');
      expect(engine.runs.map((run) => run.tag)).toEqual(order);
    });

    it('gives a community arriving during a flood the next free slot', async () => {
      const queue = await harness.open();
      const { waitFor } = await listen(queue);
      const engine = new FakeEngine();
      queue.process(engineProcessor(engine));
      const flood = [randomUUID(), randomUUID(), randomUUID(), randomUUID()];
      await queue.add({ id: flood[0]!, payload: fakePayload({ tag: 'a1', hang: true }, 'a') });
      for (const [i, id] of flood.slice(1).entries()) {
        await queue.add({ id, payload: fakePayload({ tag: `a${i + 2}` }, 'a') });
      }
      await vi.waitFor(() => expect(engine.runs).toHaveLength(1), { timeout: 10_000, interval: 10 });
      const [b1, b2] = [randomUUID(), randomUUID()];
      await queue.add({ id: b1, payload: fakePayload({ tag: 'b1' }, 'b') });
      await queue.add({ id: b2, payload: fakePayload({ tag: 'b2' }, 'b') });
      // b1 goes before the waiting flood; b2 after the flood's next job, as in round robin.
      expect([await queue.position(b1), await queue.position(flood[1]!), await queue.position(b2)]).toEqual([
        0, 1, 2,
      ]);
      await queue.cancel(flood[0]!);
      await waitFor(flood[3]!, 'completed');
      expect(engine.runs.map((run) => run.tag)).toEqual(['a1', 'b1', 'a2', 'b2', 'a3', 'a4']);
    });

    it('runs index jobs only when no user request waits', async () => {
      const queue = await harness.open();
      const { waitFor } = await listen(queue);
      const [i1, i2, u1, u2] = [randomUUID(), randomUUID(), randomUUID(), randomUUID()];
      await queue.add({ id: i1, payload: fakeIndexPayload('i1', 'a') });
      await queue.add({ id: i2, payload: fakeIndexPayload('i2', 'b') });
      await queue.add({ id: u1, payload: fakePayload({ tag: 'u1' }, 'a') });
      await queue.add({ id: u2, payload: fakePayload({ tag: 'u2' }, 'a') });
      expect(await Promise.all([u1, u2, i1, i2].map((id) => queue.position(id)))).toEqual([0, 1, 2, 3]);
      expect(await queue.depth()).toEqual({ user: 2, index: 2 });
      const engine = new FakeEngine();
      queue.process(engineProcessor(engine));
      await waitFor(i2, 'completed');
      expect(engine.runs.map((run) => run.tag)).toEqual(['u1', 'u2', 'i1', 'i2']);
    });

    it('sends progress events in order, then the result', async () => {
      const queue = await harness.open();
      const { events, waitFor } = await listen(queue);
      const id = randomUUID();
      queue.process(engineProcessor(new FakeEngine()));
      await queue.add({ id, payload: fakePayload({ tag: 'p', steps: 3, stepMs: 5 }) });
      await waitFor(id, 'completed');
      const mine = events.filter((event) => event.jobId === id);
      expect(mine).toEqual([
        { type: 'progress', jobId: id, progress: { stage: 'generating', step: 1, steps: 3 } },
        { type: 'progress', jobId: id, progress: { stage: 'generating', step: 2, steps: 3 } },
        { type: 'progress', jobId: id, progress: { stage: 'generating', step: 3, steps: 3 } },
        { type: 'completed', jobId: id, result: fakeResult({ tag: 'p' }) },
      ]);
    });

    it('aborts a running job on cancel, through its signal, and does not retry it', async () => {
      const queue = await harness.open({ backoffMs: 20 });
      const { waitFor } = await listen(queue);
      const engine = new FakeEngine();
      queue.process(engineProcessor(engine));
      const id = randomUUID();
      await queue.add({ id, payload: fakePayload({ tag: 'hang', hang: true }) });
      await vi.waitFor(() => expect(engine.runs).toHaveLength(1), { timeout: 10_000, interval: 10 });
      expect(await queue.position(id)).toBeNull();
      expect(await queue.cancel(id)).toBe(true);
      const failed = await waitFor(id, 'failed');
      expect(failed).toMatchObject({ error: { message: 'The job was cancelled.', userFacing: true } });
      expect(engine.runs[0]!.signal.reason).toBeInstanceOf(JobCancelledError);
      await sleep(200);
      expect(engine.runs).toHaveLength(1);
      expect(await queue.cancel(id)).toBe(false);
    });

    it('retries transient failures with exponential backoff', async () => {
      const queue = await harness.open({ attempts: 3, backoffMs: 100 });
      const { waitFor } = await listen(queue);
      const engine = new FakeEngine();
      queue.process(engineProcessor(engine));
      const recovers = randomUUID();
      await queue.add({ id: recovers, payload: fakePayload({ tag: 'recovers', failTimes: 2 }) });
      await waitFor(recovers, 'completed');
      const at = engine.runs.map((run) => run.at);
      expect(at).toHaveLength(3);
      // Lower bounds only: the delays are the semantics under test, not the speed.
      expect(at[1]! - at[0]!).toBeGreaterThanOrEqual(90);
      expect(at[2]! - at[1]!).toBeGreaterThanOrEqual(190);

      const givesUp = randomUUID();
      await queue.add({ id: givesUp, payload: fakePayload({ tag: 'gives-up', failTimes: 10 }) });
      const failed = await waitFor(givesUp, 'failed');
      expect(failed).toMatchObject({ error: { message: 'transient failure 3', userFacing: false } });
      expect(engine.runs.filter((run) => run.tag === 'gives-up')).toHaveLength(3);
    });

    it('fails bad input at once, with the message for the user', async () => {
      const queue = await harness.open({ attempts: 3, backoffMs: 20 });
      const { waitFor } = await listen(queue);
      const engine = new FakeEngine();
      queue.process(engineProcessor(engine));
      const id = randomUUID();
      await queue.add({ id, payload: fakePayload({ tag: 'bad', userError: 'That colour does not exist.' }) });
      const failed = await waitFor(id, 'failed');
      expect(failed).toMatchObject({ error: { message: 'That colour does not exist.', userFacing: true } });
      await sleep(200);
      expect(engine.runs).toHaveLength(1);
    });

    it('runs as many jobs at once as the concurrency allows', async () => {
      const queue = await harness.open();
      const engine = new FakeEngine();
      queue.process(engineProcessor(engine), { concurrency: 2 });
      const ids = [randomUUID(), randomUUID(), randomUUID()];
      for (const id of ids) await queue.add({ id, payload: fakePayload({ tag: id, hang: true }) });
      await vi.waitFor(() => expect(engine.runs).toHaveLength(2), { timeout: 10_000, interval: 10 });
      await sleep(200);
      expect(engine.runs).toHaveLength(2);
      expect(await queue.position(ids[2]!)).toBe(0);
      for (const id of ids) await queue.cancel(id);
    });

    it('on close, lets a short job finish and puts a long one back for the next worker', async () => {
      const queue = await harness.open();
      const { waitFor } = await listen(queue);
      const first = new FakeEngine();
      const handle = queue.process(engineProcessor(first), { shutdownGraceMs: 300 });
      const short = randomUUID();
      await queue.add({ id: short, payload: fakePayload({ tag: 'short', steps: 3, stepMs: 30 }) });
      await vi.waitFor(() => expect(first.runs).toHaveLength(1), { timeout: 10_000, interval: 5 });
      await handle.close();
      await waitFor(short, 'completed');

      const second = new FakeEngine();
      const handle2 = queue.process(engineProcessor(second), { shutdownGraceMs: 100 });
      const long = randomUUID();
      await queue.add({ id: long, payload: fakePayload({ tag: 'long', hang: true }) });
      await vi.waitFor(() => expect(second.runs).toHaveLength(1), { timeout: 10_000, interval: 5 });
      await handle2.close();
      expect(await queue.position(long)).toBe(0);

      const third = new FakeEngine();
      let attempt = 0;
      queue.process((job, ctx) => {
        attempt = job.attempt;
        return third.run(fakePayload({ tag: scriptOf(job.payload).tag }), ctx);
      });
      await waitFor(long, 'completed');
      // Released, not failed: the run cut short by the shutdown does not count as an attempt.
      expect(attempt).toBe(1);
    });
  });
}

describe.skipIf(!redisUp)('fair order across processes (BullMQ)', () => {
  it('keeps one clock for every producer: a community stays in order across bots', async () => {
    const first = await harnesses[1]!.open();
    // A second producer on the same queue, as a second bot process would be.
    const second = new BullJobQueue({ redisUrl: TEST_REDIS_URL, prefix: `${RUN}-${prefixes}` });
    opened.push(second);
    await second.ready();
    const { waitFor } = await listen(first);
    const ids = new Map(['a1', 'a2', 'a3', 'b1'].map((tag) => [tag, randomUUID()]));
    await first.add({ id: ids.get('a1')!, payload: fakePayload({ tag: 'a1' }, 'a') });
    await first.add({ id: ids.get('a2')!, payload: fakePayload({ tag: 'a2' }, 'a') });
    await second.add({ id: ids.get('a3')!, payload: fakePayload({ tag: 'a3' }, 'a') });
    await second.add({ id: ids.get('b1')!, payload: fakePayload({ tag: 'b1' }, 'b') });
    const engine = new FakeEngine();
    first.process(engineProcessor(engine));
    await waitFor(ids.get('a3')!, 'completed');
    expect(engine.runs.map((run) => run.tag)).toEqual(['a1', 'b1', 'a2', 'a3']);
  });
});

// ---------------------------------------------------------------------------------------------------
// The worker loop, the store and the delivery loop around each queue, including killed processes.
// ---------------------------------------------------------------------------------------------------

const pgUp = await serviceAvailable('Postgres (queue tests with processes sharing a store)', () =>
  probePostgres(),
);
let pgDatabase: { url: string; drop(): Promise<void> } | undefined;
const stores: Store[] = [];
const children = new Set<ChildProcess>();

async function postgresStore(): Promise<{ store: Store; url: string }> {
  if (!pgDatabase) {
    pgDatabase = await createTempDatabase('queue_test');
    const admin = await connect({ DATABASE_URL: pgDatabase.url, dataDir: '.' });
    stores.push(admin);
    const db = new pg.Client({ connectionString: pgDatabase.url });
    await db.connect();
    await db.query('CREATE TABLE queue_test_deliveries (job_id uuid NOT NULL, owner text NOT NULL)');
    await db.end();
  }
  const store = await connect({ DATABASE_URL: pgDatabase.url, dataDir: '.' });
  stores.push(store);
  return { store, url: pgDatabase.url };
}

/** One embedded store for the file: opening PGlite and migrating it is the slow part. */
let embedded: Promise<Store> | undefined;
function pgliteStore(): Promise<Store> {
  embedded ??= mkdtemp(path.join(os.tmpdir(), 'gill-queue-')).then(async (dataDir) => {
    const store = await connect({ dataDir });
    stores.push(store);
    return store;
  });
  return embedded;
}

afterAll(async () => {
  for (const child of children) child.kill('SIGKILL');
  await Promise.all(stores.map((store) => store.close().catch(() => {})));
  await pgDatabase?.drop();
});

async function deliveries(jobId: string): Promise<string[]> {
  const db = new pg.Client({ connectionString: pgDatabase!.url });
  await db.connect();
  try {
    const { rows } = await db.query('SELECT owner FROM queue_test_deliveries WHERE job_id = $1', [jobId]);
    return rows.map((row) => row.owner as string);
  } finally {
    await db.end();
  }
}

interface Child {
  process: ChildProcess;
  messages: Record<string, unknown>[];
  waitFor(key: string, value?: unknown): Promise<void>;
  exit: Promise<number | null>;
}

function spawnChild(role: 'worker' | 'bot', env: Record<string, string>): Child {
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/support/queue-child.ts', role], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.add(child);
  const messages: Record<string, unknown>[] = [];
  let buffer = '';
  child.stdout!.on('data', (data: Buffer) => {
    buffer += data.toString();
    const lines = buffer.split('\n');
    buffer = lines.pop()!;
    for (const line of lines) if (line.startsWith('{')) messages.push(JSON.parse(line));
  });
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  void exit.then(() => children.delete(child));
  const waitFor = (key: string, value?: unknown) =>
    vi.waitFor(
      () => {
        if (!messages.some((m) => key in m && (value === undefined || m[key] === value))) {
          throw new Error(`child ${role} has not reported ${key}=${String(value)}`);
        }
      },
      { timeout: 20_000, interval: 20 },
    );
  return { process: child, messages, waitFor, exit };
}

const replyTarget = { platform: 'cli' as const, channelId: 'queue-tests', data: {} };

function submit(queue: JobQueue, store: Store, script: FakeScript) {
  return submitJob(
    { store, queue },
    { idempotencyKey: randomUUID(), communityId: null, payload: fakePayload(script), replyTarget },
  ).then(({ job }) => job.id);
}

function delivery(store: Store, queue: JobQueue, owner: string, delivered: Map<string, string[]>) {
  return startDelivery({
    store,
    queue,
    platform: 'cli',
    owner,
    leaseMs: 2000,
    sweepIntervalMs: 200,
    async deliver(job) {
      delivered.set(job.id, [...(delivered.get(job.id) ?? []), owner]);
      return { owner };
    },
  });
}

const quietLogger = createLogger('silent');

for (const harness of harnesses) {
  const needs = harness.kind === 'bullmq' ? redisUp && pgUp : true;
  describe.skipIf(!needs)(`worker, store and delivery: ${harness.kind}`, () => {
    const openStore = () =>
      harness.kind === 'bullmq' ? postgresStore().then((s) => s.store) : pgliteStore();

    it('records every outcome in the store before the queue reports it', async () => {
      const store = await openStore();
      const queue = await harness.open({ attempts: 2, backoffMs: 20 });
      const seen = new Map<string, Promise<JobRecord | null>>();
      queue.subscribe((event) => {
        if (event.type !== 'progress') seen.set(event.jobId, store.jobs.get(event.jobId));
      });
      if (queue instanceof BullJobQueue) await queue.ready();
      const engine = new FakeEngine();
      const worker = runJobs({ queue, store, engine, logger: quietLogger });
      const ok = await submit(queue, store, { tag: 'ok', steps: 2 });
      const bad = await submit(queue, store, { tag: 'bad', userError: 'No such shape.' });
      const broken = await submit(queue, store, { tag: 'broken', failTimes: 5 });
      const hang = await submit(queue, store, { tag: 'hang', hang: true });
      await vi.waitFor(() => expect(engine.runs.some((run) => run.tag === 'hang')).toBe(true), {
        timeout: 10_000,
      });
      expect(await cancelJob({ store, queue }, hang)).toBe(true);
      await vi.waitFor(() => expect(seen.size).toBe(4), { timeout: 10_000, interval: 20 });
      expect(await seen.get(ok)).toMatchObject({ status: 'completed', result: fakeResult({ tag: 'ok' }) });
      expect(await seen.get(bad)).toMatchObject({
        status: 'failed',
        error: { message: 'No such shape.', userFacing: true },
      });
      expect(await seen.get(broken)).toMatchObject({
        status: 'failed',
        attempts: 2,
        error: { userFacing: false },
      });
      expect(await seen.get(hang)).toMatchObject({ status: 'cancelled' });
      await worker.close();
    });

    it('recovers a job whose worker died mid-job, and delivers it once', async () => {
      const store = await openStore();
      const queue = await harness.open();
      const delivered = new Map<string, string[]>();
      const bot = delivery(store, queue, 'bot-1', delivered);
      let id: string;
      if (harness.kind === 'bullmq') {
        const prefix = `${RUN}-${prefixes}`;
        const dying = spawnChild('worker', {
          CHILD_QUEUE: 'bullmq',
          REDIS_URL: TEST_REDIS_URL,
          QUEUE_PREFIX: prefix,
          DATABASE_URL: pgDatabase!.url,
        });
        await dying.waitFor('ready');
        id = await submit(queue, store, { tag: 'stalls', steps: 10, stepMs: 100 });
        await dying.waitFor('started', 'stalls');
        dying.process.kill('SIGKILL');
        await dying.exit;
      } else {
        // An embedded process that died mid-job: the store says running, the new process's queue is empty.
        const lost = await submit(new MemoryJobQueue(), store, { tag: 'stalls', steps: 10, stepMs: 10 });
        await store.jobs.markRunning(lost);
        expect(await recoverUnfinished(store, queue)).toBe(1);
        id = lost;
      }
      const engine = new FakeEngine();
      const worker = runJobs({ queue, store, engine, logger: quietLogger });
      await vi.waitFor(async () => expect((await store.jobs.get(id))?.deliveredAt).toBeTruthy(), {
        timeout: 20_000,
        interval: 50,
      });
      expect(engine.runs.map((run) => run.tag)).toEqual(['stalls']);
      expect(await store.jobs.get(id)).toMatchObject({ status: 'completed', attempts: 2 });
      await bot.sweep();
      expect(delivered.get(id)).toEqual(['bot-1']);
      await worker.close();
      await bot.close();
    });

    it('delivers exactly once when the bot dies mid-job and several bots come back', async () => {
      const store = await openStore();
      const queue = await harness.open();
      const engine = new FakeEngine();
      const worker = runJobs({ queue, store, engine, logger: quietLogger });
      const delivered = new Map<string, string[]>();
      let id: string;
      if (harness.kind === 'bullmq') {
        const botEnv = {
          CHILD_QUEUE: 'bullmq',
          REDIS_URL: TEST_REDIS_URL,
          QUEUE_PREFIX: `${RUN}-${prefixes}`,
          DATABASE_URL: pgDatabase!.url,
        };
        const dying = spawnChild('bot', { ...botEnv, OWNER: 'bot-dies' });
        await dying.waitFor('ready');
        id = await submit(queue, store, { tag: 'slow', steps: 5, stepMs: 100 });
        await vi.waitFor(() => expect(engine.runs).toHaveLength(1), { timeout: 10_000, interval: 10 });
        dying.process.kill('SIGKILL');
        await dying.exit;
        await vi.waitFor(async () => expect((await store.jobs.get(id))?.status).toBe('completed'), {
          timeout: 10_000,
          interval: 20,
        });
        // Two bots back at once, each with its own store connection: one reply.
        const other = (await postgresStore()).store;
        const [a, b] = [
          delivery(store, queue, 'bot-a', delivered),
          delivery(other, queue, 'bot-b', delivered),
        ];
        await vi.waitFor(async () => expect((await store.jobs.get(id))?.deliveredAt).toBeTruthy(), {
          timeout: 10_000,
          interval: 20,
        });
        await Promise.all([a.sweep(), b.sweep()]);
        expect(await deliveries(id)).toEqual([]);
        expect(delivered.get(id)).toHaveLength(1);
        await Promise.all([a.close(), b.close()]);
      } else {
        const dying = delivery(store, queue, 'bot-dies', delivered);
        id = await submit(queue, store, { tag: 'slow', steps: 5, stepMs: 20 });
        await vi.waitFor(() => expect(engine.runs).toHaveLength(1), { timeout: 10_000, interval: 5 });
        await dying.close();
        await vi.waitFor(async () => expect((await store.jobs.get(id))?.status).toBe('completed'), {
          timeout: 10_000,
          interval: 20,
        });
        const [a, b] = [
          delivery(store, queue, 'bot-a', delivered),
          delivery(store, queue, 'bot-b', delivered),
        ];
        await Promise.all([a.sweep(), b.sweep()]);
        await Promise.all([a.sweep(), b.sweep()]);
        expect(delivered.get(id)).toHaveLength(1);
        await Promise.all([a.close(), b.close()]);
      }
      await worker.close();
    });

    it.skipIf(!pgUp)('on SIGTERM, finishes the running job and exits cleanly', async () => {
      const { store, url } = await postgresStore();
      const queue = await harness.open();
      const env = {
        CHILD_QUEUE: harness.kind,
        REDIS_URL: TEST_REDIS_URL,
        QUEUE_PREFIX: `${RUN}-${prefixes}`,
        DATABASE_URL: url,
        GRACE_MS: '10000',
      };
      let id: string;
      let child: Child;
      if (harness.kind === 'bullmq') {
        child = spawnChild('worker', env);
        await child.waitFor('ready');
        id = await submit(queue, store, { tag: 'term', steps: 5, stepMs: 100 });
      } else {
        // The embedded process takes the job from the store at start (recoverUnfinished).
        id = await submit(new MemoryJobQueue(), store, { tag: 'term', steps: 5, stepMs: 100 });
        child = spawnChild('worker', env);
      }
      await child.waitFor('started', 'term');
      child.process.kill('SIGTERM');
      expect(await child.exit).toBe(0);
      expect(child.messages).toContainEqual({ stopped: 'worker', runs: 1 });
      expect(await store.jobs.get(id)).toMatchObject({
        status: 'completed',
        result: fakeResult({ tag: 'term' }),
      });
    });
  });
}
