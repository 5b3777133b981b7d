import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { prepareCommunities } from '../bench/threads/replay.ts';
import { type BotCore, createBotCore } from '../src/bots/core/bot-core.ts';
import {
  boundedBias,
  FEEDBACK_HALF_LIFE_MS,
  FEEDBACK_MAX,
  FEEDBACK_STEP,
} from '../src/bots/core/feedback.ts';
import type { ImageIngest } from '../src/bots/core/images.ts';
import type { Command, InboundTurn } from '../src/bots/core/turn.ts';
import { createEngine } from '../src/engine/index.ts';
import type { CommunityRef } from '../src/jobs.ts';
import { createLogger } from '../src/log.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import type { WorkerHandle } from '../src/queue/queue.ts';
import { runJobs } from '../src/queue/worker.ts';
import type { JobRecord, Store } from '../src/store/types.ts';
import { openEngineStore } from './support/engine-store.ts';

/**
 * A decision that learns from the community (issue #12 §4): reactions and "Retrieve/Generate instead"
 * move the community's retrieve/generate bias, bounded and decaying, shown and reset by `/gill`. The
 * flip is measured on the committed tiny bundle through the core, the queue and the engine, with the
 * emoji gallery `gill start` seeds in both communities.
 */

/** The stated bound: a community that always wants retrieval for a prompt kind flips it within this many events. */
const FLIP_WITHIN_EVENTS = 9;
/** A prompt the committed bundle answers by generating (it retrieves for most others: EVAL.md). */
const PROMPT = 'draw a big red circle';

const logger = createLogger('error');
const learner: CommunityRef = { platform: 'slack', externalId: 'T-LEARNS' };
const bystander: CommunityRef = { platform: 'slack', externalId: 'T-BYSTANDER' };
const noFetch: ImageIngest = {
  ingest: async () => {
    throw new Error('no attachment is fetched in these tests');
  },
};

let store: Store;
let closeStore: () => Promise<void>;
let queue: MemoryJobQueue;
let worker: WorkerHandle;
let engineClose: () => Promise<void>;
let core: BotCore;
let turns = 0;

function turn(community: CommunityRef, user: string, command: Command, text?: string): InboundTurn {
  const n = ++turns;
  return {
    platform: 'slack',
    community,
    user: { id: user, displayName: user, isAdmin: user === 'UADMIN' },
    channelId: 'C1',
    threadId: `t${n}`,
    command,
    messages: text
      ? [{ id: `m${n}`, role: 'user', authorId: user, authorName: user, text, attachments: [] }]
      : [],
    idempotencyKey: `feedback-test:${n}`,
    replyTarget: { platform: 'slack', channelId: 'C1', threadId: `t${n}`, data: {} },
  };
}

async function finished(jobId: string): Promise<JobRecord> {
  for (let i = 0; i < 6000; i++) {
    const job = await store.jobs.get(jobId);
    if (job && (job.status === 'completed' || job.status === 'failed')) return job;
    await sleep(50);
  }
  throw new Error(`job ${jobId} did not finish`);
}

async function run(t: InboundTurn): Promise<JobRecord> {
  const outcome = await core.submit(t);
  if (outcome.status !== 'accepted') throw new Error(`not accepted: ${JSON.stringify(outcome)}`);
  return finished(outcome.jobId);
}

async function answer(t: InboundTurn): Promise<string> {
  const outcome = await core.submit(t);
  if (outcome.status !== 'answered') throw new Error(`not answered: ${JSON.stringify(outcome)}`);
  return outcome.text;
}

beforeAll(async () => {
  const opened = await openEngineStore(path.resolve('models/gill-tiny'));
  store = opened.store;
  closeStore = opened.close;
  queue = new MemoryJobQueue({ logger });
  const engine = await createEngine(opened.config, store, logger);
  engineClose = () => engine.close();
  worker = runJobs({ queue, store, engine, logger });
  core = createBotCore({ store, queue, logger, images: noFetch });
  await prepareCommunities(store, [{ community: learner }, { community: bystander }], (bytes) =>
    engine.model.imageEmbedding(bytes),
  );
}, 600_000);

afterAll(async () => {
  await worker?.close();
  await queue?.close();
  await engineClose?.();
  await closeStore?.();
});

describe('the bias a community teaches', () => {
  it('is about one step per event near zero, bounded, and halves over the half-life', () => {
    expect(boundedBias(1)).toBeCloseTo(FEEDBACK_STEP, 1);
    expect(boundedBias(1000)).toBeLessThanOrEqual(FEEDBACK_MAX);
    expect(boundedBias(1000)).toBeGreaterThan(FEEDBACK_MAX - 0.01);
    expect(boundedBias(-1000)).toBeGreaterThanOrEqual(-FEEDBACK_MAX);
  });

  it('flips a prompt the community always wants retrieved, and leaves another community alone', async () => {
    const before = await run(turn(learner, 'UASKER', { kind: 'chat' }, PROMPT));
    expect(before.result?.decision?.choice).toBe('generate');
    let events = 0;
    let latest = before;
    while (latest.result?.decision?.choice === 'generate' && events < FLIP_WITHIN_EVENTS) {
      // Two members 👎 the generated picture and one asks for a retrieved one instead.
      for (const member of ['UMEMBER1', 'UMEMBER2']) {
        expect(
          await core.react({
            community: learner,
            reply: { jobId: latest.id },
            userId: member,
            reaction: 'down',
            added: true,
          }),
        ).toBe(true);
        events++;
      }
      const instead = await run(
        turn(learner, 'UMEMBER3', { kind: 'button', action: 'retrieve', jobId: latest.id }),
      );
      expect(instead.result?.decision?.choice).toBe('retrieve');
      events++;
      latest = await run(turn(learner, 'UASKER', { kind: 'chat' }, PROMPT));
    }
    expect(latest.result?.decision?.choice).toBe('retrieve');
    expect(events).toBeLessThanOrEqual(FLIP_WITHIN_EVENTS);
    const learned = latest.payload.kind === 'chat' ? latest.payload.retrieveBias : 0;
    expect(learned).toBeCloseTo(boundedBias(events), 5);

    // The same prompt in another community: no feedback there, the model's own decision.
    const elsewhere = await run(turn(bystander, 'UOTHER', { kind: 'chat' }, PROMPT));
    expect(elsewhere.payload.kind === 'chat' && elsewhere.payload.retrieveBias).toBe(0);
    expect(elsewhere.result?.decision).toEqual(before.result?.decision);
  }, 900_000);

  it('takes a removed reaction back, ignores replies without a decision, and keeps one vote per person', async () => {
    const community = await store.communities.ensure(learner);
    const { events } = await store.feedback.sum(community.id, FEEDBACK_HALF_LIFE_MS);
    const reply = await run(turn(learner, 'UASKER', { kind: 'chat' }, 'how are you today?'));
    const react = (added: boolean, reaction: 'up' | 'down' = 'up') =>
      core.react({ community: learner, reply: { jobId: reply.id }, userId: 'UMEMBER1', reaction, added });
    if (reply.result?.decision) {
      expect(await react(true)).toBe(true);
      expect(await react(true, 'down')).toBe(true);
      expect((await store.feedback.sum(community.id, FEEDBACK_HALF_LIFE_MS)).events).toBe(events + 1);
      expect(await react(false, 'up')).toBe(false);
      expect(await react(false, 'down')).toBe(true);
    } else {
      expect(await react(true)).toBe(false);
    }
    expect((await store.feedback.sum(community.id, FEEDBACK_HALF_LIFE_MS)).events).toBe(events);
    // Another community cannot vote on this reply.
    expect(
      await core.react({
        community: bystander,
        reply: { jobId: reply.id },
        userId: 'UX',
        reaction: 'down',
        added: true,
      }),
    ).toBe(false);
  }, 300_000);

  it('decays: an event one half-life old counts half', async () => {
    const community = await store.communities.ensure(bystander);
    const old = await run(turn(bystander, 'UOTHER', { kind: 'chat' }, PROMPT));
    const at = new Date(Date.now() - FEEDBACK_HALF_LIFE_MS);
    await store.feedback.record({
      communityId: community.id,
      jobId: old.id,
      authorKey: 'slack:UOLD',
      source: 'reaction',
      direction: 1,
      at,
    });
    const { weighted, events } = await store.feedback.sum(community.id, FEEDBACK_HALF_LIFE_MS);
    expect(events).toBe(1);
    expect(weighted).toBeCloseTo(0.5, 3);
    await store.feedback.reset(community.id);
  }, 300_000);

  it('is shown by /gill show and forgotten by /gill feedback reset', async () => {
    const shown = await answer(turn(learner, 'UADMIN', { kind: 'config', change: { setting: 'show' } }));
    expect(shown).toMatch(
      /Learned from feedback: \+\d\.\d\d towards retrieving, from \d+ reactions and button presses/,
    );
    const reset = await answer(
      turn(learner, 'UADMIN', { kind: 'config', change: { setting: 'feedback-reset' } }),
    );
    expect(reset).toMatch(/^Forgot \d+ feedback events/);
    expect(await answer(turn(learner, 'UADMIN', { kind: 'config', change: { setting: 'show' } }))).toContain(
      'Learned from feedback: nothing yet',
    );
    const after = await run(turn(learner, 'UASKER', { kind: 'chat' }, PROMPT));
    expect(after.payload.kind === 'chat' && after.payload.retrieveBias).toBe(0);
    expect(after.result?.decision?.choice).toBe('generate');
    const refused = await core.submit(
      turn(learner, 'UASKER', { kind: 'config', change: { setting: 'feedback-reset' } }),
    );
    expect(refused).toMatchObject({ status: 'refused', reason: 'not_admin' });
  }, 300_000);
});
