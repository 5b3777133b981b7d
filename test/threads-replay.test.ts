import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ATTRIBUTES } from '../bench/threads/attributes.ts';
import { loadConversations, type ReplayConversation } from '../bench/threads/conversations.ts';
import { PLATFORMS } from '../bench/threads/platforms.ts';
import {
  type ConversationRun,
  determinism,
  type ReplaySession,
  scorePlatform,
  startReplaySession,
} from '../bench/threads/replay.ts';
import { createLogger } from '../src/log.ts';
import { openEngineStore } from './support/engine-store.ts';

/**
 * The thread replay evaluation's smoke slice (the whole set is `npm run eval:threads`): 20 conversations
 * through the loopback Discord, the loopback Slack and the playground into the committed tiny bundle,
 * twice. The same conversation must give the same context items on all three platforms and in both runs,
 * and the last images must reach the accuracy the committed bundle reaches (a floor, raised as the model
 * improves; models/gill-tiny/EVAL.md has the figures).
 */

const SLICE = 20;
/** Mean attribute accuracy (%) of the last image the committed bundle reaches on the slice, on every platform. */
const ACCURACY_FLOOR = 25;

let session: ReplaySession;
let closeStore: () => Promise<void>;
let conversations: ReplayConversation[];
let runs: ConversationRun[][];

beforeAll(async () => {
  conversations = (await loadConversations()).slice(0, SLICE);
  const opened = await openEngineStore(path.resolve('models/gill-tiny'));
  closeStore = opened.close;
  session = await startReplaySession({
    config: opened.config,
    store: opened.store,
    logger: createLogger('error'),
    platforms: PLATFORMS,
  });
}, 300_000);

afterAll(async () => {
  await session?.close();
  await closeStore?.();
});

describe('thread replay through Discord, Slack and the playground', () => {
  it('replays the slice twice', async () => {
    runs = await session.replay(conversations, 2);
    expect(runs).toHaveLength(2);
    expect(runs[0]).toHaveLength(SLICE * PLATFORMS.length);
  }, 1_200_000);

  it('gives the same context items on every platform and in both runs', () => {
    const same = determinism(runs, conversations, PLATFORMS);
    expect(same.differing).toEqual([]);
    expect(same.sameRuns).toBe(SLICE);
  });

  it('shows the model its own answers and images, and none of their rendering', () => {
    for (const run of runs[0]!) {
      for (const [i, turn] of run.turns.entries()) {
        const assistant = turn.context.filter((item) => item.role === 'assistant');
        // One answer per earlier turn: its text, then each image it showed.
        const earlier = run.turns.slice(0, i);
        expect(
          assistant.filter((item) => item.type === 'text').map((item) => item.type === 'text' && item.text),
        ).toEqual(earlier.filter((t) => t.reply).map((t) => t.reply));
        expect(assistant.filter((item) => item.type === 'image')).toHaveLength(
          earlier.reduce((n, t) => n + t.images.length, 0),
        );
        for (const item of turn.context) {
          expect(item).not.toHaveProperty('author');
          if (item.type === 'text')
            expect(item.text).not.toMatch(/Decided to|Image \d+:|seed \d|<@|@gill|⏳|🎨/);
        }
      }
    }
  });

  it('reaches the accuracy floor on every platform, with the same figures on each', () => {
    const scores = PLATFORMS.map((p) => scorePlatform(p, runs[0]!));
    for (const score of scores) {
      expect(score.conversations).toBe(SLICE);
      expect(score.accuracy.mean).toBeGreaterThanOrEqual(ACCURACY_FLOOR);
      for (const attribute of ATTRIBUTES)
        expect(score.accuracy[attribute]).toBe(scores[0]!.accuracy[attribute]);
    }
  });
});
