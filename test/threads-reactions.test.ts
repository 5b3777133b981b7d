import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FEEDBACK_HALF_LIFE_MS } from '../src/bots/core/feedback.ts';
import { type DiscordBot, startDiscord } from '../src/bots/discord/index.ts';
import { type SlackHandle, startSlack } from '../src/bots/slack/index.ts';
import { loadConfig } from '../src/config.ts';
import type { Engine, JobPayload, JobResult } from '../src/jobs.ts';
import { createLogger } from '../src/log.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import type { WorkerHandle } from '../src/queue/queue.ts';
import { runJobs } from '../src/queue/worker.ts';
import { connect } from '../src/store/connect.ts';
import type { Store } from '../src/store/types.ts';
import { FakeDiscord } from './fakes/discord.ts';
import { eventCallback, FakeSlack, mentionEnvelope, sendEvent } from './fakes/slack.ts';

/**
 * 👍/👎 on the bot's replies reach the community's decision feedback through the real discord.js client
 * and the real Bolt app against the loopback fakes; reactions on other messages, other emoji and the
 * bot's own reactions do not.
 */

/** Answers every chat turn with a generated picture, so each reply carries a decision. */
class DecidingEngine implements Engine {
  constructor(private readonly store: Store) {}

  async run(payload: JobPayload): Promise<JobResult> {
    const png = await sharp({ create: { width: 16, height: 16, channels: 3, background: '#dd2222' } })
      .png()
      .toBuffer();
    const hash = await this.store.blobs.put(png, 'image/png');
    return {
      kind: payload.kind,
      text: 'here is a big red circle.',
      images: [{ kind: 'generated', hash, mime: 'image/png', width: 16, height: 16, score: 0.3 }],
      decision: { choice: 'generate', pGenerate: 0.7, pRetrieve: 0.3 },
      notes: [],
      seed: 1,
    };
  }

  async close(): Promise<void> {}
}

const logger = createLogger('error');
let dataDir: string;
let store: Store;
let queue: MemoryJobQueue;
let worker: WorkerHandle;

async function feedbackEvents(platform: 'discord' | 'slack', externalId: string) {
  const community = await store.communities.ensure({ platform, externalId });
  return store.feedback.sum(community.id, FEEDBACK_HALF_LIFE_MS);
}

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), 'gill-reactions-'));
  store = await connect({ DATABASE_URL: undefined, dataDir });
  queue = new MemoryJobQueue({ logger });
  worker = runJobs({ queue, store, engine: new DecidingEngine(store), logger });
});

afterAll(async () => {
  await worker?.close();
  await queue?.close();
  await store?.close();
  await rm(dataDir, { recursive: true, force: true });
});

describe('reactions on replies as decision feedback', () => {
  it('Discord: 👍/👎 on a reply count, once per person, and removing one takes it back', async () => {
    const fake = await new FakeDiscord().start();
    let bot: DiscordBot | undefined;
    try {
      const alice = fake.addUser('alice');
      const bob = fake.addUser('bob');
      const config = loadConfig({
        DISCORD_TOKEN: 'fake-token',
        DISCORD_APPLICATION_ID: fake.applicationId,
        DISCORD_API_URL: fake.apiUrl,
        DISCORD_CDN_URL: fake.cdnUrl,
        GILL_DATA_DIR: dataDir,
      });
      bot = await startDiscord({ config, store, queue, logger, sweepIntervalMs: 200 });
      const asked = fake.post({ author: alice, content: 'draw a big red circle', mentionBot: true });
      const thread = String(asked.id);
      const reply = await fake.waitFor(
        () => fake.botMessages(thread).find((m) => JSON.stringify(m.components).includes('gill:retrieve:')),
        15_000,
        'the reply with its buttons',
      );
      const messageId = String(reply.id);
      const events = () => feedbackEvents('discord', fake.guildId);

      fake.react({ channelId: thread, messageId, user: alice, emoji: '👎' });
      fake.react({ channelId: thread, messageId, user: bob, emoji: '👎🏽' });
      fake.react({ channelId: thread, messageId, user: bob, emoji: '🎉' });
      fake.react({ channelId: fake.generalChannelId, messageId: String(asked.id), user: bob, emoji: '👍' });
      await expect.poll(async () => (await events()).events, { timeout: 10_000 }).toBe(2);
      // 👎 on a generated picture pushes towards retrieving.
      expect((await events()).weighted).toBeCloseTo(2, 3);

      fake.react({ channelId: thread, messageId, user: alice, emoji: '👎', added: false });
      await expect.poll(async () => (await events()).events, { timeout: 10_000 }).toBe(1);
    } finally {
      await bot?.stop();
      await fake.close();
    }
  });

  it('Slack: reaction_added and reaction_removed on a reply count; on other messages they do not', async () => {
    const secret = 'reaction-test-secret';
    const fake = await FakeSlack.start();
    let slack: SlackHandle | undefined;
    try {
      fake.addUser('UALICE');
      fake.addUser('UBOB');
      const config = loadConfig({
        SLACK_BOT_TOKEN: fake.botToken,
        SLACK_SIGNING_SECRET: secret,
        SLACK_API_URL: fake.apiUrl,
        GILL_DATA_DIR: dataDir,
      });
      slack = await startSlack({ config, store, queue, logger, listen: { host: '127.0.0.1', port: 0 } });
      const target = { url: slack.eventsUrl!, signingSecret: secret };
      const asked = fake.userMessage({
        channel: 'CREACT',
        user: 'UALICE',
        text: `<@${fake.botUserId}> draw a big red circle`,
      });
      await sendEvent(target, mentionEnvelope(fake, asked, 'EvReactAsk'));
      const reply = await fake.waitFor(
        () =>
          fake
            .botMessages('CREACT', asked.ts)
            .find((m) => JSON.stringify(m.blocks ?? []).includes('gill:retrieve:')),
        15_000,
        'the reply with its buttons',
      );
      const react = (
        id: string,
        user: string,
        name: string,
        ts: string,
        added = true,
        itemUser = fake.botUserId,
      ) =>
        sendEvent(
          target,
          eventCallback(
            fake,
            {
              type: added ? 'reaction_added' : 'reaction_removed',
              user,
              reaction: name,
              item: { type: 'message', channel: 'CREACT', ts },
              item_user: itemUser,
              ts: `${Date.now() / 1000}`,
            },
            id,
          ),
        );
      const events = () => feedbackEvents('slack', fake.teamId);
      await react('EvR1', 'UALICE', '+1', reply.ts);
      await react('EvR2', 'UBOB', '+1::skin-tone-3', reply.ts);
      await react('EvR3', 'UBOB', 'tada', reply.ts);
      await react('EvR4', 'UBOB', '-1', asked.ts, true, 'UALICE');
      await expect.poll(async () => (await events()).events, { timeout: 10_000 }).toBe(2);
      // 👍 on a generated picture pushes towards generating.
      expect((await events()).weighted).toBeCloseTo(-2, 3);
      await react('EvR5', 'UBOB', '+1', reply.ts, false);
      await expect.poll(async () => (await events()).events, { timeout: 10_000 }).toBe(1);
    } finally {
      await slack?.stop();
      await fake.close();
    }
  });
});
