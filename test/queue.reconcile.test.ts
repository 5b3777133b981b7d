import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { type BotCore, createBotCore } from '../src/bots/core/bot-core.ts';
import type { InboundTurn } from '../src/bots/core/turn.ts';
import { createLogger } from '../src/log.ts';
import { BullJobQueue } from '../src/queue/bullmq.ts';
import { QueueUnavailableError } from '../src/queue/errors.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import { type Reconciler, reconcileJobs, startReconciler } from '../src/queue/reconcile.ts';
import { redisEvictionPolicy } from '../src/queue/redis.ts';
import { runJobs } from '../src/queue/worker.ts';
import { connect, type Store } from '../src/store/index.ts';
import { FakeEngine, type FakeScript, fakePayload } from './support/fake-engine.ts';
import {
  createTempDatabase,
  probePostgres,
  probeRedis,
  serviceAvailable,
  TEST_REDIS_URL,
} from './support/services.ts';
import { TcpProxy } from './support/tcp-proxy.ts';

/**
 * No zombie jobs (#13 §3): a job the store holds unfinished but the queue lost (an add that failed while
 * Redis was away, keys lost to FLUSHALL) is run after all, and stops counting against the user's caps.
 * The bot side goes through the real bot core, whose queue reaches the real Redis through a proxy that
 * can be cut; the worker side is the real worker loop.
 */

const redisUp = await serviceAvailable('Redis (reconciler)', () => probeRedis());
const pgUp = await serviceAvailable('Postgres (reconciler)', () => probePostgres());
const RUN = `gilltest-reconcile-${Date.now().toString(36)}-${randomUUID().slice(0, 6)}`;
const logger = createLogger('silent');

describe.skipIf(!redisUp || !pgUp)('reconciler: no zombie jobs', () => {
  let database: { url: string; drop(): Promise<void> };
  let store: Store;
  const cleanups: (() => Promise<unknown>)[] = [];

  beforeAll(async () => {
    database = await createTempDatabase('queue_reconcile');
    store = await connect({ DATABASE_URL: database.url, dataDir: '.' });
  });

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  afterAll(async () => {
    await store?.close();
    await database?.drop();
    const redis = new Redis(TEST_REDIS_URL);
    const keys = await redis.keys(`${RUN}*`);
    if (keys.length) await redis.del(...keys);
    redis.disconnect();
  });

  /** A bot whose queue goes through a proxy, a worker straight to Redis, and a community of its own. */
  async function cluster() {
    const prefix = `${RUN}-${randomUUID().slice(0, 6)}`;
    const target = new URL(TEST_REDIS_URL);
    const proxy = await TcpProxy.start({ host: target.hostname, port: Number(target.port || 6379) });
    const viaProxy = new URL(TEST_REDIS_URL);
    viaProxy.hostname = '127.0.0.1';
    viaProxy.port = String(proxy.port);
    const botQueue = new BullJobQueue({ redisUrl: viaProxy.toString(), prefix, logger });
    const workerQueue = new BullJobQueue({ redisUrl: TEST_REDIS_URL, prefix, logger });
    await Promise.all([botQueue.ready(), workerQueue.ready()]);
    const engine = new FakeEngine();
    const worker = runJobs({ queue: workerQueue, store, engine, logger });
    cleanups.push(
      () => proxy.close(),
      () => botQueue.close(),
      () => workerQueue.close(),
      () => worker.close(),
    );
    const bot = createBotCore({
      store,
      queue: botQueue,
      logger,
      images: {
        ingest: async () => {
          throw new Error('these tests post no images');
        },
      },
    });
    const community = { platform: 'playground' as const, externalId: prefix };
    const submit = (user: string, script: FakeScript) => bot.submit(turn(community, user, script));
    const reconcile = (): Reconciler => {
      const reconciler = startReconciler({ store, queue: botQueue, logger, intervalMs: 200, graceMs: 300 });
      cleanups.push(() => reconciler.close());
      return reconciler;
    };
    return { proxy, bot, engine, submit, reconcile };
  }

  function turn(community: InboundTurn['community'], user: string, script: FakeScript): InboundTurn {
    return {
      platform: 'playground',
      community,
      user: { id: user, displayName: user, isAdmin: false },
      channelId: 'general',
      command: { kind: 'imagine', prompt: `fake:${JSON.stringify(script)}` },
      messages: [],
      idempotencyKey: randomUUID(),
      replyTarget: { platform: 'playground', channelId: 'general', data: {} },
    };
  }

  const accepted = async (outcome: ReturnType<BotCore['submit']>) => {
    const result = await outcome;
    if (result.status !== 'accepted') throw new Error(`not accepted: ${JSON.stringify(result)}`);
    return result.jobId;
  };

  const completed = (jobIds: string[]) =>
    vi.waitFor(
      async () => {
        const statuses = await Promise.all(jobIds.map(async (id) => (await store.jobs.get(id))?.status));
        expect(statuses).toEqual(jobIds.map(() => 'completed'));
      },
      { timeout: 20_000, interval: 50 },
    );

  it('runs the jobs whose add failed while Redis was away, and accepts the next request', async () => {
    const { proxy, engine, submit, reconcile } = await cluster();
    proxy.down();
    await expect(submit('u1', { tag: 'lost-1' })).rejects.toThrow(QueueUnavailableError);
    await expect(submit('u1', { tag: 'lost-2' })).rejects.toThrow(QueueUnavailableError);
    proxy.up();
    // The two jobs the queue never got hold the user's cap of 2.
    expect(await submit('u1', { tag: 'refused' })).toMatchObject({ status: 'refused', reason: 'limited' });
    const lost = (await store.jobs.listUnfinished(100)).map((job) => job.id);
    expect(lost).toHaveLength(2);

    reconcile();
    await completed(lost);
    const next = await accepted(submit('u1', { tag: 'next' }));
    await completed([next]);
    expect(engine.runs.map((run) => run.tag)).toEqual(['lost-1', 'lost-2', 'next']);
  });

  it('runs the jobs Redis lost mid-run (FLUSHALL), and accepts the next request', async () => {
    const { engine, submit, reconcile } = await cluster();
    reconcile();
    const running = await accepted(submit('u2', { tag: 'running', steps: 10, stepMs: 100 }));
    await vi.waitFor(() => expect(engine.runs.map((run) => run.tag)).toEqual(['running']), {
      timeout: 10_000,
      interval: 10,
    });
    const waiting = [
      await accepted(submit('u1', { tag: 'waiting-1' })),
      await accepted(submit('u1', { tag: 'waiting-2' })),
    ];
    const redis = new Redis(TEST_REDIS_URL);
    await redis.flushdb();
    redis.disconnect();

    await completed([running, ...waiting]);
    const next = await accepted(submit('u1', { tag: 'next' }));
    await completed([next]);
    // Each ran once: the job running during the flush was added again, and its worker replayed it.
    expect(engine.runs.map((run) => run.tag)).toEqual(['running', 'waiting-1', 'waiting-2', 'next']);
  });

  it('fails, with a reply, a job the queue finished without the store hearing of it', async () => {
    const queue = new MemoryJobQueue({ attempts: 1 });
    cleanups.push(() => queue.close());
    const { job } = await store.jobs.createOrGet({
      idempotencyKey: randomUUID(),
      communityId: null,
      payload: fakePayload({ tag: 'lost-event' }),
      replyTarget: { platform: 'cli', channelId: 'reconcile', data: {} },
    });
    // The queue ran it; the worker that should have recorded the outcome never did.
    await queue.add({ id: job.id, payload: job.payload });
    const handle = queue.process(async () => {
      throw new Error('worker crashed');
    });
    await vi.waitFor(async () => expect(await queue.presence(job.id)).toBe('finished'), { timeout: 10_000 });
    await handle.close();
    expect(await reconcileJobs({ store, queue, graceMs: 0 })).toMatchObject({ failed: 1, requeued: 0 });
    expect(await store.jobs.get(job.id)).toMatchObject({ status: 'failed', error: { userFacing: false } });
  });

  it('fails, with a reply, a job the queue stays unreachable for', async () => {
    const { proxy } = await cluster();
    const prefix = `${RUN}-down`;
    const queue = new BullJobQueue({ redisUrl: `redis://127.0.0.1:${proxy.port}`, prefix, logger });
    cleanups.push(() => queue.close());
    await queue.ready();
    const { job } = await store.jobs.createOrGet({
      idempotencyKey: randomUUID(),
      communityId: null,
      payload: fakePayload({ tag: 'never-added' }),
      replyTarget: { platform: 'cli', channelId: 'reconcile', data: {} },
    });
    proxy.down();
    await new Promise((resolve) => setTimeout(resolve, 50));
    const soon = await reconcileJobs({ store, queue, graceMs: 0, giveUpMs: 60_000 });
    expect(soon).toMatchObject({ unreachable: 1, failed: 0 });
    expect((await store.jobs.get(job.id))?.status).toBe('queued');
    const later = await reconcileJobs({ store, queue, graceMs: 0, giveUpMs: 0 });
    expect(later.failed).toBeGreaterThanOrEqual(1);
    expect(await store.jobs.get(job.id)).toMatchObject({
      status: 'failed',
      error: { userFacing: true, message: expect.stringMatching(/job queue was unavailable.*try again/) },
    });
  });

  it("reports Redis's eviction policy for gill doctor", async () => {
    expect(await redisEvictionPolicy(TEST_REDIS_URL)).toMatchObject({
      policy: expect.any(String),
      ok: expect.any(Boolean),
    });
    const report = await redisEvictionPolicy(TEST_REDIS_URL);
    expect(report.ok).toBe(report.policy === 'noeviction');
    expect(report.message).toContain(report.policy!);
    await expect(redisEvictionPolicy('redis://127.0.0.1:1')).rejects.toThrow(/unreachable/);
  });
});
