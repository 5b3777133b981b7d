import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  PLAYGROUND_COMMUNITY,
  type PlaygroundHandle,
  seedGallery,
  startPlayground,
} from '../src/bots/playground/index.ts';
import { DEFAULT_SEED_COUNT } from '../src/bots/playground/seed-gallery.ts';

import type { JobContext, JobPayload, JobResult } from '../src/jobs.ts';
import { createLogger } from '../src/log.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import type { WorkerHandle } from '../src/queue/queue.ts';
import { runJobs } from '../src/queue/worker.ts';
import { connect } from '../src/store/index.ts';
import { DEFAULT_COMMUNITY_CONFIG, type Store } from '../src/store/types.ts';
import { EchoEngine } from './support/echo-engine.ts';

/**
 * The first start as a newcomer meets it (issue: indexing must not eat the users' capacity): `gill start`
 * boots the playground and seeds its gallery through the real seed path (about 300 index jobs), and the
 * first mention, made while that gallery is still being indexed, is accepted and answered.
 */

/** Index jobs take a while, as the model's do, so the seed gallery's backlog is still there when people talk. */
class SlowIndexEngine extends EchoEngine {
  override async run(payload: JobPayload, ctx: JobContext): Promise<JobResult> {
    if (payload.kind === 'index') await new Promise((resolve) => setTimeout(resolve, 50));
    return super.run(payload, ctx);
  }
}

describe('first start: the seed gallery is indexed while the newcomer talks', () => {
  const logger = createLogger('warn');
  let dataDir: string;
  let store: Store;
  let queue: MemoryJobQueue;
  let worker: WorkerHandle;
  let playground: PlaygroundHandle;
  let seeding: Promise<unknown> | undefined;

  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), 'gill-first-start-'));
    store = await connect({ dataDir, DATABASE_URL: undefined });
    queue = new MemoryJobQueue({ logger });
    worker = runJobs({ queue, store, engine: new SlowIndexEngine(store), logger });
    playground = await startPlayground({
      config: { GILL_HOST: '127.0.0.1', GILL_PORT: 7860 },
      store,
      queue,
      logger,
      listen: { port: 0 },
      sweepIntervalMs: 250,
    });
  });

  afterAll(async () => {
    await seeding?.catch(() => {});
    await playground?.stop();
    await worker?.close();
    await queue?.close();
    await store?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('a first mention within the first seconds is accepted and answered', { timeout: 120_000 }, async () => {
    const community = await store.communities.ensure(PLAYGROUND_COMMUNITY);
    const unfinishedIndexJobs = async () =>
      (
        await store.sql.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM jobs WHERE community_id = $1 AND kind = 'index'
             AND status IN ('queued', 'running')`,
          [community.id],
        )
      )[0]!.n;
    // As `gill start` does: seeding runs in the background once the playground is up.
    seeding = seedGallery({ store, queue, logger });
    const backlog = DEFAULT_COMMUNITY_CONFIG.communityConcurrentJobs * 3;
    await expect.poll(unfinishedIndexJobs, { timeout: 20_000, interval: 20 }).toBeGreaterThanOrEqual(backlog);

    const form = new FormData();
    form.set('text', '@gill hello, is anyone there?');
    form.set('clientKey', randomUUID());
    form.set('userId', 'newcomer');
    const response = await fetch(`${playground.url}api/messages`, {
      method: 'POST',
      headers: { 'x-gill-playground': '1' },
      body: form,
    });
    expect(response.status).toBe(200);
    const posted = (await response.json()) as { threadId: string; answering: boolean; notice?: string };
    expect(posted.notice).toBeUndefined();
    expect(posted.answering).toBe(true);
    // The gallery was still being indexed, past the community's cap, when the mention was accepted.
    expect(await unfinishedIndexJobs()).toBeGreaterThan(DEFAULT_COMMUNITY_CONFIG.communityConcurrentJobs);

    const answer = async () => {
      const thread = await fetch(`${playground.url}api/threads/${posted.threadId}`);
      const { messages } = (await thread.json()) as { messages: { role: string; reply: unknown }[] };
      // The bot's message carries its reply once the job is delivered (before, its progress).
      return messages.some(
        (m) => m.role === 'assistant' && JSON.stringify(m.reply).includes('echo: hello, is anyone there?'),
      );
    };
    await expect.poll(answer, { timeout: 60_000, interval: 250 }).toBe(true);
    expect(await seeding).toMatchObject({ emoji: DEFAULT_SEED_COUNT, jobs: DEFAULT_SEED_COUNT });
  });
});
