import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createLogger } from '../src/log.ts';
import { type BullJobQueue, openBullJobQueue } from '../src/queue/bullmq.ts';
import { submitJob } from '../src/queue/submit.ts';
import { connect, type Store } from '../src/store/index.ts';
import { type GillProcess, sample, spawnGill } from './support/gill-process.ts';
import { OwnRedis } from './support/own-services.ts';
import {
  createTempDatabase,
  probePostgres,
  probeRedis,
  serviceAvailable,
  TEST_REDIS_URL,
} from './support/services.ts';
import { TcpProxy } from './support/tcp-proxy.ts';

/**
 * The operator's view of the real roles (README, "Scaling"): `gill worker` serves /metrics with the named
 * series once a job has run through it, /readyz turns 503 naming the queue when Redis goes away, and
 * `gill doctor` says when Redis may evict queued jobs.
 */

const up =
  (await serviceAvailable('Postgres (role metrics)', () => probePostgres())) &&
  (await serviceAvailable('Redis (role metrics)', () => probeRedis()));
const logger = createLogger('silent');

describe.skipIf(!up)('gill worker: /metrics and /readyz', () => {
  let database: { url: string; drop(): Promise<void> };
  let store: Store;
  let redis: OwnRedis;
  let proxy: TcpProxy;
  let queue: BullJobQueue;
  let worker: GillProcess;

  beforeAll(async () => {
    // A Redis of its own: the worker's queue keys are the defaults, and nothing shared is flushed.
    redis = await OwnRedis.start();
    database = await createTempDatabase('role_metrics');
    store = await connect({ DATABASE_URL: database.url, dataDir: '.' });
    proxy = await TcpProxy.start({ host: '127.0.0.1', port: redis.port });
    queue = await openBullJobQueue({ redisUrl: redis.url, logger });
    worker = await spawnGill('worker', {
      DATABASE_URL: database.url,
      REDIS_URL: `redis://127.0.0.1:${proxy.port}`,
      GILL_SKIP_CHECKSUMS: '1',
    });
  });

  afterAll(async () => {
    await worker?.stop();
    await queue?.close();
    await proxy?.close();
    await redis?.close();
    await store?.close();
    await database?.drop();
  });

  it('counts a job run through the real engine, its wait and the model load time', async () => {
    await worker.ready();
    const { job } = await submitJob(
      { store, queue },
      {
        idempotencyKey: randomUUID(),
        communityId: null,
        payload: {
          kind: 'imagine',
          community: { platform: 'cli', externalId: 'ops' },
          prompt: 'a red square',
          steps: 2,
        },
        replyTarget: { platform: 'cli', channelId: 'ops', data: {} },
      },
    );
    await vi.waitFor(async () => expect((await store.jobs.get(job.id))?.status).toBe('completed'), {
      timeout: 30_000,
      interval: 100,
    });
    const text = await worker.scrape();
    expect(sample(text, 'gill_job_run_seconds_count', { kind: 'imagine', outcome: 'completed' })).toBe(1);
    expect(sample(text, 'gill_job_wait_seconds_count', { kind: 'imagine', community_class: 'cli' })).toBe(1);
    expect(sample(text, 'gill_model_load_seconds', { part: 'engine' })).toBeGreaterThan(0);
    expect(sample(text, 'gill_queue_depth', { lane: 'user' })).toBe(0);
    expect(sample(text, 'gill_queue_depth', { lane: 'index' })).toBe(0);
    expect(text).toContain('role="worker"');
  });

  it('answers /readyz 503 naming the queue while Redis is unreachable, and 200 again after', async () => {
    await worker.ready();
    proxy.down();
    try {
      const readyz = new URL('/readyz', worker.metricsUrl);
      const response = await fetch(readyz);
      expect(response.status).toBe(503);
      const body = (await response.json()) as { ready: boolean; checks: Record<string, string> };
      expect(body.ready).toBe(false);
      expect(body.checks.store).toBe('ok');
      expect(body.checks.model).toBe('ok');
      expect(body.checks.queue).not.toBe('ok');
      expect(body.checks.queue).toMatch(/\w/);
    } finally {
      proxy.up();
    }
    await worker.ready(30_000);
  });
});

const run = promisify(execFile);

describe.skipIf(!up)('gill doctor: the eviction policy', () => {
  let lru: OwnRedis;
  let dataDir: string;
  beforeAll(async () => {
    lru = await OwnRedis.start(['--maxmemory-policy', 'allkeys-lru']);
    dataDir = await mkdtemp(path.join(tmpdir(), 'gill-doctor-'));
  });
  afterAll(async () => {
    await lru?.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  const doctor = async (redisUrl: string) => {
    // Doctor exits 1 when something else is missing (no platform is fine); its output is what counts.
    const result = await run(process.execPath, ['bin/gill.mjs', 'doctor'], {
      env: {
        ...process.env,
        REDIS_URL: redisUrl,
        DATABASE_URL: '',
        GILL_DATA_DIR: dataDir,
        GILL_SKIP_CHECKSUMS: '1',
        GILL_LOG_LEVEL: 'silent',
      },
    }).catch((error: { stdout: string }) => error);
    return result.stdout;
  };

  it('warns when maxmemory-policy is not noeviction, and says so when it is', async () => {
    const warned = await doctor(lru.url);
    expect(warned).toContain(
      'warning: Redis maxmemory-policy is allkeys-lru: Redis may evict queued jobs when memory runs short. Set maxmemory-policy noeviction.',
    );
    const fine = await doctor(TEST_REDIS_URL);
    expect(fine).toContain('Redis maxmemory-policy is noeviction.');
    expect(fine).not.toContain('warning: Redis maxmemory-policy');
  });
});
