import { randomUUID } from 'node:crypto';
import { QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it, vi } from 'vitest';
import type { Engine, JobProgress } from '../src/jobs.ts';
import { BullJobQueue } from '../src/queue/bullmq.ts';
import { startEngineThread } from '../src/queue/engine-thread.ts';
import { JobCancelledError } from '../src/queue/errors.ts';
import type { QueueEvent } from '../src/queue/queue.ts';
import { fakePayload, fakeResult } from './support/fake-engine.ts';
import { probeRedis, serviceAvailable, TEST_REDIS_URL } from './support/services.ts';

/** The engine thread, and what it is for: the queue lock survives an engine that blocks its thread. */

const FAKE_ENGINE = new URL('./support/fake-engine.ts', import.meta.url).href;
const redisUp = await serviceAvailable('Redis (worker lock renewal)', () => probeRedis());
const RUN = `gilltest-worker-${Date.now().toString(36)}-${randomUUID().slice(0, 6)}`;
const engines: Engine[] = [];

async function threadedFakeEngine(): Promise<Engine> {
  const engine = await startEngineThread({
    module: FAKE_ENGINE,
    exportName: 'createFakeEngine',
    options: null,
  });
  engines.push(engine);
  return engine;
}

afterAll(async () => {
  await Promise.all(engines.map((engine) => engine.close()));
});

describe('engine thread', () => {
  it('runs jobs with progress, and brings back user errors as UserInputError', async () => {
    const engine = await threadedFakeEngine();
    const progress: JobProgress[] = [];
    const result = await engine.run(fakePayload({ tag: 't', steps: 2 }), {
      progress: (update) => progress.push(update),
      signal: new AbortController().signal,
    });
    expect(result).toEqual(fakeResult({ tag: 't' }));
    expect(progress).toEqual([
      { stage: 'generating', step: 1, steps: 2 },
      { stage: 'generating', step: 2, steps: 2 },
    ]);
    const failure = engine.run(fakePayload({ userError: 'Too many images.' }), {
      progress: () => {},
      signal: new AbortController().signal,
    });
    await expect(failure).rejects.toMatchObject({ name: 'UserInputError', message: 'Too many images.' });
  });

  it('aborts a running job inside the thread with the reason given', async () => {
    const engine = await threadedFakeEngine();
    const controller = new AbortController();
    const running = engine.run(fakePayload({ hang: true }), {
      progress: () => {},
      signal: controller.signal,
    });
    setTimeout(() => controller.abort(new JobCancelledError()), 50);
    await expect(running).rejects.toMatchObject({ name: 'JobCancelledError' });
  });

  it('says why when the engine cannot start', async () => {
    const start = startEngineThread({ module: FAKE_ENGINE, exportName: 'noSuchFactory', options: null });
    await expect(start).rejects.toThrow(/noSuchFactory|not a function/);
  });
});

describe.skipIf(!redisUp)('queue lock while the engine blocks its thread', () => {
  const queues: BullJobQueue[] = [];
  afterAll(async () => {
    await Promise.all(queues.map((queue) => queue.close()));
    const redis = new Redis(TEST_REDIS_URL);
    const keys = await redis.keys(`${RUN}*`);
    if (keys.length) await redis.del(...keys);
    redis.disconnect();
  });

  it('keeps the lock through 3 lock durations of blocking inference: no stall, one run', async () => {
    const options = { redisUrl: TEST_REDIS_URL, prefix: RUN, lockDurationMs: 1000, stalledIntervalMs: 300 };
    const queue = new BullJobQueue(options);
    // A second, idle worker whose stalled checker would take the job if the lock lapsed.
    const watcher = new BullJobQueue(options);
    queues.push(queue, watcher);
    const stalls: string[] = [];
    const rawEvents = new QueueEvents('gill-jobs', { connection: { url: TEST_REDIS_URL }, prefix: RUN });
    rawEvents.on('stalled', ({ jobId }) => stalls.push(jobId));
    await rawEvents.waitUntilReady();
    const events: QueueEvent[] = [];
    queue.subscribe((event) => events.push(event));
    await queue.ready();

    const engine = await threadedFakeEngine();
    let runs = 0;
    queue.process((job, ctx) => {
      runs += 1;
      return engine.run(job.payload, ctx);
    });
    watcher.process(async () => {
      throw new Error('the watcher must never get the job');
    });
    const id = randomUUID();
    await queue.add({ id, payload: fakePayload({ tag: 'blocks', blockMs: 3000 }) });
    await vi.waitFor(
      () => {
        if (!events.some((event) => event.jobId === id && event.type !== 'progress'))
          throw new Error('not done');
      },
      { timeout: 20_000, interval: 50 },
    );
    expect(events.filter((event) => event.jobId === id)).toEqual([
      { type: 'completed', jobId: id, result: fakeResult({ tag: 'blocks' }) },
    ]);
    expect(runs).toBe(1);
    expect(stalls).toEqual([]);
    await rawEvents.close();
  });
});
