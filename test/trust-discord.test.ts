import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type DiscordBot, startDiscord } from '../src/bots/discord/index.ts';
import { loadConfig } from '../src/config.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import { runJobs } from '../src/queue/worker.ts';
import { connect } from '../src/store/connect.ts';
import type { Store } from '../src/store/types.ts';
import { FakeDiscord, type FakeUser } from './fakes/discord.ts';
import { EchoEngine, sha256 } from './support/echo-engine.ts';
import { gpsPhoto, hasGps, PRIVATE_TEXT, pngBomb, SVG } from './support/hostile-files.ts';
import { byteForms, captureLogger } from './support/log-capture.ts';

/**
 * Trust through the running Discord bot (the real discord.js client against the loopback fake, the store
 * on PGlite, the in-process queue): a Discord error carrying the interaction's token and the reply's image
 * leaves neither in the log and does not stop the bot; images are stored and re-posted without their
 * EXIF; hostile attachments are each named with the reason they were not read.
 */

// Shaped like a real bot token, so the pattern redaction is what keeps it out of the log.
const BOT_TOKEN = 'MTA5ODc2NTQzMjEwOTg3NjU0Mw.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB';

let dataDir: string;
let fake: FakeDiscord;
let store: Store;
let queue: MemoryJobQueue;
let engine: EchoEngine;
let worker: { close(): Promise<void> };
let bot: DiscordBot;
let alice: FakeUser;
const lines: string[] = [];

const content = (m: Record<string, unknown> | undefined) => String(m?.content ?? '');

/** The last edit of an interaction's response that carried files. */
function finalEditWithFiles(token: string) {
  return fake
    .callsTo('PATCH', new RegExp(`/webhooks/${fake.applicationId}/${token}/messages/@original$`))
    .filter((call) => call.files.length > 0 && call.status === 200)
    .at(-1);
}

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), 'gill-trust-discord-'));
  const logger = captureLogger(lines);
  store = await connect({ DATABASE_URL: undefined, dataDir }, { logger });
  fake = await new FakeDiscord().start();
  alice = fake.addUser('alice');
  queue = new MemoryJobQueue({ backoffMs: 50 });
  engine = new EchoEngine(store);
  worker = runJobs({ queue, store, engine, logger });
  const config = loadConfig({
    DISCORD_TOKEN: BOT_TOKEN,
    DISCORD_APPLICATION_ID: fake.applicationId,
    DISCORD_API_URL: fake.apiUrl,
    DISCORD_CDN_URL: fake.cdnUrl,
    GILL_DATA_DIR: dataDir,
  });
  bot = await startDiscord({ config, store, queue, logger, sweepIntervalMs: 200 });
});

afterAll(async () => {
  engine?.release();
  await bot?.stop();
  await worker?.close();
  await queue?.close();
  await fake?.close();
  await store?.close();
  await rm(dataDir, { recursive: true, force: true });
});

describe('Discord errors in the log', () => {
  it('answers 50035 to the @original edit with the image: the bot keeps running, the reply arrives through the channel, the log holds no token or bytes', async () => {
    // Only the final edit carries the image; progress edits go through.
    fake.failNext(
      'PATCH',
      /^\/webhooks\/\d+\/[^/]+\/messages\/@original$/,
      400,
      50035,
      'Invalid Form Body',
      1,
      (call) => call.files.length > 0,
    );
    const { token } = fake.interact({
      user: alice,
      command: {
        name: 'imagine',
        options: [
          { name: 'prompt', type: 3, value: 'a red square' },
          { name: 'steps', type: 4, value: 1 },
        ],
      },
    });
    // The refused edit is not retried: the reply goes out as a channel message naming the asker.
    const done = await fake.waitFor(
      () =>
        fake
          .botMessages(fake.generalChannelId)
          .find((m) => (m.attachments as unknown[]).length > 0 && content(m).includes('generated')),
      20_000,
      'the image after the failed edit',
    );
    expect(content(done)).toContain(`<@${alice.id}>`);
    const failed = fake
      .callsTo('PATCH', /\/messages\/@original$/)
      .filter((call) => call.status === 400 && call.files.length > 0);
    expect(failed).toHaveLength(1);
    const uploaded = failed[0]!.files[0]!.data;

    // Still running: a mention afterwards is answered.
    const mention = fake.post({ author: alice, content: 'still there?', mentionBot: true });
    await fake.waitFor(
      () => fake.botMessages(mention.id as string).find((m) => content(m).includes('echo: still there?')),
      10_000,
      'an answer to the next mention',
    );

    const entries = lines.map((line) => JSON.parse(line) as Record<string, unknown>);
    const logged = entries.filter(
      (e) => e.msg === 'interaction response not editable; replying through the channel',
    );
    expect(logged).toHaveLength(1);
    expect(logged[0]!.err).toMatchObject({
      type: 'DiscordAPIError',
      code: 50035,
      status: 400,
      method: 'PATCH',
    });
    const text = lines.join('');
    expect(text).not.toContain(token);
    expect(text).not.toContain(BOT_TOKEN);
    for (const form of byteForms(uploaded)) expect(text).not.toContain(form);
  });
});

describe('images posted on Discord', () => {
  it('re-posts an indexed photo without its EXIF, GPS position or text, upright', async () => {
    const admin = fake.addUser('root', { admin: true });
    const { token: settings } = fake.interact({
      user: admin,
      command: {
        name: 'gill',
        options: [{ name: 'indexing', type: 1, options: [{ name: 'enabled', type: 5, value: true }] }],
      },
    });
    await fake.waitFor(
      () => content(fake.original(settings)).includes('Settings updated'),
      10_000,
      'indexing on',
    );
    const photo = await gpsPhoto();
    expect(hasGps((await sharp(photo).metadata()).exif)).toBe(true);
    fake.post({
      author: alice,
      content: '',
      attachments: [fake.addAttachment(photo, 'red star.jpg', 'image/jpeg')],
    });
    await fake.waitFor(() => engine.payloads.some((p) => p.kind === 'index'), 10_000, 'the index job');
    const community = await store.communities.ensure({ platform: 'discord', externalId: fake.guildId });
    for (let tries = 0; (await store.images.count(community.id)) < 1; tries++) {
      expect(tries, 'the indexed image is recorded').toBeLessThan(100);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }

    const { token } = fake.interact({
      user: alice,
      command: {
        name: 'find',
        options: [
          { name: 'query', type: 3, value: 'red star' },
          { name: 'k', type: 4, value: 1 },
        ],
      },
    });
    const edit = await fake.waitFor(() => finalEditWithFiles(token), 10_000, 'the find reply with the image');
    const reposted = edit.files[0]!.data;
    const meta = await sharp(reposted).metadata();
    expect(meta).toMatchObject({ format: 'jpeg', width: 20, height: 40 });
    expect(meta.exif).toBeUndefined();
    expect(meta.orientation).toBeUndefined();
    expect(reposted.includes(PRIVATE_TEXT)).toBe(false);
  });

  it('names each hostile attachment with its reason, and answers from the clean photo', async () => {
    const photo = await gpsPhoto();
    const message = fake.post({
      author: alice,
      content: 'what are these?',
      mentionBot: true,
      attachments: [
        fake.addAttachment(photo, 'me.jpg', 'image/jpeg'),
        fake.addAttachment(pngBomb(), 'bomb.png', 'image/png'),
        fake.addAttachment(Buffer.alloc(0), 'empty.png', 'image/png'),
        fake.addAttachment(SVG, 'drawing.png', 'image/png'),
      ],
    });
    const reply = await fake.waitFor(
      () => fake.botMessages(message.id as string).find((m) => content(m).includes('echo: what are these?')),
      20_000,
      'the reply',
    );
    const text = content(reply);
    expect(text).toContain('"bomb.png" is 10000×10000 pixels; the limit is 16,777,216 pixels');
    expect(text).toContain('"empty.png" is empty (0 bytes)');
    expect(text).toContain('"drawing.png" is a svg file, not a PNG, JPEG, WebP or GIF image');
    // The engine saw one image: the photo as stored, not as posted.
    const hashes = /images: ([0-9a-f,]+)/.exec(text)?.[1]?.split(',') ?? [];
    expect(hashes).toHaveLength(1);
    expect(hashes[0]).not.toBe(sha256(photo));
    const stored = await store.blobs.get(hashes[0]!);
    expect(stored?.mime).toBe('image/jpeg');
    expect((await sharp(Buffer.from(stored!.bytes)).metadata()).exif).toBeUndefined();
  });
});
