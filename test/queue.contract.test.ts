import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { BullJobQueue } from '../src/engine/queue/bullmq.ts';
import { JobCancelledError } from '../src/engine/queue/errors.ts';
import { MemoryJobQueue } from '../src/engine/queue/memory.ts';
import type { JobProcessor, JobQueue, QueueEvent } from '../src/engine/queue/queue.ts';
import { FakeEngine, fakePayload, fakeResult, scriptOf } from './support/fake-engine.ts';
import { probeRedis, serviceAvailable, TEST_REDIS_URL } from './support/services.ts';

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
