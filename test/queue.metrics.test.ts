import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { checkIndexingLimits, checkLimits } from '../src/bots/core/limits.ts';
import { createLogger } from '../src/log.ts';
import { createMetrics } from '../src/metrics/metrics.ts';
import { startMetricsServer } from '../src/metrics/server.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import { submitJob } from '../src/queue/submit.ts';
import { runJobs } from '../src/queue/worker.ts';
import { type RoleParts, readinessChecks } from '../src/roles/observe.ts';
import { connect, type Store } from '../src/store/index.ts';
import { FakeEngine, type FakeScript, fakeIndexPayload, fakePayload } from './support/fake-engine.ts';
import { createTempDatabase, probePostgres, serviceAvailable } from './support/services.ts';

/** The operator's view (#14 §4): what the worker loop records, and the /metrics, /healthz, /readyz server. */

const pgUp = await serviceAvailable('Postgres (queue metrics)', () => probePostgres());
const logger = createLogger('silent');

/** One sample of a metric as the Prometheus text format shows it, e.g. `name{a="b"} 3`. */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  const wanted = Object.entries(labels).map(([key, value]) => `${key}="${value}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const inside = line.slice(name.length + 1, line.indexOf('}'));
    if (wanted.every((pair) => inside.split(',').includes(pair))) return Number(line.split(' ').at(-1));
  }
  return undefined;
}

describe.skipIf(!pgUp)('queue metrics', () => {
  let database: { url: string; drop(): Promise<void> };
  let store: Store;

  beforeAll(async () => {
    database = await createTempDatabase('queue_metrics');
    store = await connect({ DATABASE_URL: database.url, dataDir: '.' });
  });

  afterAll(async () => {
    await store?.close();
    await database?.drop();
  });

  const submit = (queue: MemoryJobQueue, script: FakeScript) =>
    submitJob(
      { store, queue },
      {
        idempotencyKey: randomUUID(),
        communityId: null,
        payload: fakePayload(script),
        replyTarget: { platform: 'cli', channelId: 'metrics', data: {} },
      },
    ).then(({ job }) => job.id);

  it('records wait and run times, failures by reason and retries from the worker loop', async () => {
    const metrics = createMetrics({ role: 'worker', defaultMetrics: false });
    const queue = new MemoryJobQueue({ attempts: 2, backoffMs: 10 });
    const ids = [
      await submit(queue, { tag: 'ok', steps: 2, stepMs: 20 }),
      await submit(queue, { tag: 'bad', userError: 'No such colour.' }),
      await submit(queue, { tag: 'flaky', failTimes: 1 }),
      await submit(queue, { tag: 'broken', failTimes: 5 }),
    ];
    const worker = runJobs({ queue, store, engine: new FakeEngine(), logger, metrics });
    await vi.waitFor(
      async () => {
        const statuses = await Promise.all(ids.map(async (id) => (await store.jobs.get(id))?.status));
        expect(statuses).toEqual(['completed', 'failed', 'completed', 'failed']);
      },
      { timeout: 10_000, interval: 20 },
    );
    await worker.close();
    const text = await metrics.registry.metrics();
    const imagine = { kind: 'imagine' };
    expect(sample(text, 'gill_job_wait_seconds_count', { ...imagine, community_class: 'cli' })).toBe(4);
    expect(sample(text, 'gill_job_run_seconds_count', { ...imagine, outcome: 'completed' })).toBe(2);
    expect(sample(text, 'gill_job_run_seconds_sum', { ...imagine, outcome: 'completed' })).toBeGreaterThan(
      0.03,
    );
    expect(sample(text, 'gill_job_failures_total', { ...imagine, reason: 'user_input' })).toBe(1);
    expect(sample(text, 'gill_job_failures_total', { ...imagine, reason: 'error' })).toBe(1);
    expect(sample(text, 'gill_job_retries_total', imagine)).toBe(2);
    expect(text).toContain('role="worker"');
  });

  it('serves /metrics with the queue depth per lane, /healthz, and /readyz from its checks', async () => {
    const metrics = createMetrics({ role: 'bot' });
    const queue = new MemoryJobQueue();
    for (const tag of ['u1', 'u2']) await queue.add({ id: randomUUID(), payload: fakePayload({ tag }) });
    await queue.add({ id: randomUUID(), payload: fakeIndexPayload('i1') });
    metrics.setQueueDepthSource(() => queue.depth());
    let modelLoaded = false;
    const server = await startMetricsServer({
      metrics,
      port: 0,
      host: '127.0.0.1',
      readiness: {
        store: async () => (await store.sql.query('SELECT 1 AS one')).length === 1,
        queue: async () => (await queue.depth()).user >= 0,
        model: () => modelLoaded,
        cache: () => {
          throw new Error('cache unreachable');
        },
      },
      checkTimeoutMs: 500,
    });
    try {
      const scrape = await fetch(`${server.url}/metrics`);
      expect(scrape.status).toBe(200);
      expect(scrape.headers.get('content-type')).toContain('text/plain');
      const text = await scrape.text();
      expect(sample(text, 'gill_queue_depth', { lane: 'user' })).toBe(2);
      expect(sample(text, 'gill_queue_depth', { lane: 'index' })).toBe(1);
      expect(text).toContain('process_cpu_seconds_total');

      expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
      const notReady = await fetch(`${server.url}/readyz`);
      expect(notReady.status).toBe(503);
      expect(await notReady.json()).toEqual({
        ready: false,
        checks: { store: 'ok', queue: 'ok', model: 'not ready', cache: 'cache unreachable' },
      });
      expect((await fetch(`${server.url}/nowhere`)).status).toBe(404);
    } finally {
      await server.close();
    }

    modelLoaded = true;
    const ready = await startMetricsServer({
      metrics,
      port: 0,
      host: '127.0.0.1',
      readiness: { store: () => true, model: () => modelLoaded },
    });
    try {
      const response = await fetch(`${ready.url}/readyz`);
      expect(response.status).toBe(200);
      expect(await response.json()).toEqual({ ready: true, checks: { store: 'ok', model: 'ok' } });
    } finally {
      await ready.close();
    }
  });

  it('counts rate-limit refusals by the limit that refused', async () => {
    const metrics = createMetrics({ role: 'bot', defaultMetrics: false });
    const community = await store.communities.ensure({
      platform: 'cli',
      externalId: `limits-${randomUUID()}`,
    });
    const config = { ...(await store.communities.getConfig(community.id)), userJobsPerMinute: 1 };
    const check = { store, communityId: community.id, authorKey: 'cli:alice', config, metrics };
    expect(await checkLimits(check)).toBeNull();
    expect(await checkLimits(check)).toMatch(/per minute/);
    expect(await checkLimits({ ...check, config: { ...config, userConcurrentJobs: 0 } })).toMatch(
      /in progress/,
    );
    const text = await metrics.registry.metrics();
    expect(sample(text, 'gill_rate_limit_refusals_total', { limit: 'per_minute' })).toBe(1);
    expect(sample(text, 'gill_rate_limit_refusals_total', { limit: 'user_concurrent' })).toBe(1);
  });

  it("counts indexing's own refusals apart from the request limits", async () => {
    const metrics = createMetrics({ role: 'bot', defaultMetrics: false });
    const community = await store.communities.ensure({
      platform: 'cli',
      externalId: `index-limits-${randomUUID()}`,
    });
    const check = {
      store,
      communityId: community.id,
      posterKey: 'cli:alice',
      limits: { pendingPerCommunity: 10, imagesPerUserPerMinute: 1 },
      metrics,
    };
    expect(await checkIndexingLimits(check)).toBeNull();
    expect(await checkIndexingLimits(check)).toMatch(/a minute are added/);
    expect(
      await checkIndexingLimits({ ...check, limits: { pendingPerCommunity: 0, imagesPerUserPerMinute: 1 } }),
    ).toMatch(/index is busy/);
    const text = await metrics.registry.metrics();
    expect(sample(text, 'gill_rate_limit_refusals_total', { limit: 'index_per_minute' })).toBe(1);
    expect(sample(text, 'gill_rate_limit_refusals_total', { limit: 'index_pending' })).toBe(1);
    expect(sample(text, 'gill_rate_limit_refusals_total', { limit: 'per_minute' })).toBeUndefined();
  });
});

describe('bot readiness', () => {
  it('is not ready until its platform adapters are connected, whatever the store and queue say', async () => {
    const parts: RoleParts = { queue: new MemoryJobQueue() };
    const checks = readinessChecks(parts, 'bot');
    expect(Object.keys(checks).sort()).toEqual(['platforms', 'queue', 'store']);
    expect(() => checks.platforms!()).toThrow('not connected yet');
    parts.platforms = ['discord'];
    expect(checks.platforms!()).toBe(true);
    expect(readinessChecks(parts, 'worker')).not.toHaveProperty('platforms');
  });
});
