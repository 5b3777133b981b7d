import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type DiscordBot, startDiscord } from '../src/bots/discord/index.ts';
import { describeMessageContent } from '../src/bots/discord/intents.ts';
import { runRegister } from '../src/bots/discord/register.ts';
import { type Config, loadConfig } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import { runJobs } from '../src/queue/worker.ts';
import { connect } from '../src/store/connect.ts';
import type { Store } from '../src/store/types.ts';
import { FakeDiscord, type FakeUser } from './fakes/discord.ts';
import { EchoEngine, png, sha256 } from './support/echo-engine.ts';

/**
 * The Discord adapter end to end: the real discord.js client against the loopback fake (REST, gateway,
 * CDN), the real store on PGlite, the in-process queue and worker loop, and an engine double that
 * answers from what it was given (image hashes, prompts, the store's vector search).
 */

let dataDir: string;
let fake: FakeDiscord;
let store: Store;
let queue: MemoryJobQueue;
let engine: EchoEngine;
let worker: { close(): Promise<void> };
let bot: DiscordBot | null;
let config: Config;
let logs: Record<string, unknown>[];
let alice: FakeUser;
let admin: FakeUser;

const logger = () =>
  createLogger(
    'info',
    new Writable({
      write(chunk, _enc, done) {
        logs.push(JSON.parse(String(chunk)));
        done();
      },
    }),
  );

async function startBot(overrides: Record<string, string> = {}): Promise<DiscordBot> {
  config = loadConfig({
    DISCORD_TOKEN: 'fake-token',
    DISCORD_APPLICATION_ID: fake.applicationId,
    DISCORD_API_URL: fake.apiUrl,
    DISCORD_CDN_URL: fake.cdnUrl,
    GILL_DATA_DIR: dataDir,
    ...overrides,
  });
  bot = await startDiscord({ config, store, queue, logger: logger(), sweepIntervalMs: 200 });
  return bot;
}

async function stopBot(): Promise<void> {
  await bot?.stop();
  bot = null;
}

/** Finished replies in a channel: bot messages that are not progress lines. */
/** An admin turns indexing on for the general channel with `/gill indexing`. */
async function turnIndexingOn(): Promise<void> {
  const { token } = fake.interact({
    user: admin,
    command: {
      name: 'gill',
      options: [{ name: 'indexing', type: 1, options: [{ name: 'enabled', type: 5, value: true }] }],
    },
  });
  await fake.waitFor(() => content(fake.original(token)).includes('Settings updated'), 10_000, 'indexing on');
}

function replies(channelId: string) {
  return fake
    .botMessages(channelId)
    .filter((m) => m.type === 0 && !/^(⏳|💭|🔎|🎨|📦|🚫) /.test(String(m.content)));
}

const content = (m: Record<string, unknown> | undefined) => String(m?.content ?? '');

/** The custom id of the Cancel button on a message, if it has one. */
const cancelIdOf = (m: Record<string, unknown> | undefined) =>
  JSON.stringify(m?.components ?? []).match(/gill:cancel:[\w-]+/)?.[0];

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), 'gill-discord-'));
  logs = [];
  store = await connect({ DATABASE_URL: undefined, dataDir }, { logger: logger() });
});

afterAll(async () => {
  await store?.close();
  await rm(dataDir, { recursive: true, force: true });
});

beforeEach(async () => {
  logs = [];
  fake = await new FakeDiscord().start();
  alice = fake.addUser('alice');
  admin = fake.addUser('root', { admin: true });
  queue = new MemoryJobQueue({ backoffMs: 50 });
  engine = new EchoEngine(store);
  worker = runJobs({ queue, store, engine, logger: logger() });
  await startBot();
});

afterEach(async () => {
  engine.release();
  await stopBot();
  await worker.close();
  await queue.close();
  await fake.close();
});

describe('Discord adapter against the fake Discord', () => {
  it('connects through /gateway/bot, identifies once and heartbeats', async () => {
    expect(fake.callsTo('GET', /^\/gateway\/bot$/)).toHaveLength(1);
    expect(fake.identifies).toBe(1);
    await fake.waitFor(() => fake.heartbeats > 0, 5000, 'a heartbeat');
    // Commands are registered by `gill discord register`, never at start.
    expect(fake.callsTo('PUT', /commands$/)).toHaveLength(0);
  });

  it('answers a mention in a new thread started from the message', async () => {
    const message = fake.post({ author: alice, content: 'hello there', mentionBot: true });
    const threadId = message.id as string;
    const reply = await fake.waitFor(() => replies(threadId)[0], 10_000, 'a reply in the thread');
    expect(
      fake.callsTo('POST', new RegExp(`/channels/${fake.generalChannelId}/messages/${threadId}/threads$`)),
    ).toHaveLength(1);
    expect(content(reply)).toContain('echo: hello there | images: none');
    // The progress message became the reply: one message from the bot in the thread, none in the channel.
    expect(fake.botMessages(threadId).filter((m) => m.type === 0)).toHaveLength(1);
    expect(fake.botMessages(fake.generalChannelId)).toHaveLength(0);
    expect(content(reply)).not.toContain('<@');
  });

  it('continues the dialogue in the thread and reads images from anywhere in it', async () => {
    const red = await png('#ff0000');
    const blue = await png('#0000ff');
    const first = fake.post({
      author: alice,
      content: 'look at this',
      mentionBot: true,
      attachments: [fake.addAttachment(red, 'red.png', 'image/png')],
    });
    const threadId = first.id as string;
    await fake.waitFor(() => replies(threadId)[0], 10_000, 'the first reply');
    fake.post({
      channelId: threadId,
      author: alice,
      content: 'and this one: which is warmer?',
      attachments: [fake.addAttachment(blue, 'blue.png', 'image/png')],
    });
    const second = await fake.waitFor(() => replies(threadId)[1], 10_000, 'the second reply');
    expect(content(second)).toContain('echo: and this one: which is warmer?');
    expect(content(second)).toContain(`images: ${sha256(red)},${sha256(blue)}`);
    const chat = engine.payloads.filter((p) => p.kind === 'chat').at(-1);
    expect(chat?.kind === 'chat' && chat.context.map((i) => `${i.role}:${i.type}`)).toEqual([
      'user:text',
      'user:image',
      'assistant:text',
      'user:text',
      'user:image',
    ]);
  });

  it('/imagine defers at once, shows throttled progress, then posts the image with buttons', async () => {
    const { token } = fake.interact({
      user: alice,
      command: {
        name: 'imagine',
        options: [
          { name: 'prompt', type: 3, value: 'a red square' },
          { name: 'steps', type: 4, value: 12 },
        ],
      },
    });
    const done = await fake.waitFor(
      () =>
        (fake.original(token)?.attachments as unknown[] | undefined)?.length
          ? fake.original(token)
          : undefined,
      15_000,
      'the image',
    );
    const callback = fake.callsTo('POST', /^\/interactions\/\d+\/[^/]+\/callback$/);
    expect(callback).toHaveLength(1);
    expect(callback[0]!.body?.type).toBe(5);
    expect(callback[0]!.status).toBe(204);
    const edits = fake.callsTo(
      'PATCH',
      new RegExp(`/webhooks/${fake.applicationId}/${token}/messages/@original$`),
    );
    const progress = edits.filter((c) => /^(⏳|🎨) /.test(String(c.body?.content)));
    expect(progress.some((c) => String(c.body?.content).startsWith('🎨 Drawing… step'))).toBe(true);
    // 12 steps were reported; edits are throttled to one a second.
    expect(progress.length).toBeLessThan(12);
    for (let i = 1; i < progress.length; i++)
      expect(progress[i]!.at - progress[i - 1]!.at).toBeGreaterThanOrEqual(950);
    const final = edits.at(-1)!;
    expect(final.files).toHaveLength(1);
    expect(final.files[0]!.name).toBe('gill-generated-1.png');
    expect((await sharp(final.files[0]!.data).metadata()).format).toBe('png');
    expect(content(done)).toContain('Image 1: generated (seed 7)');
    const jobId = String(JSON.stringify(done.components)).match(/gill:regenerate:([\w-]+)/)?.[1];
    expect(jobId).toBeTruthy();
  });

  it('/find returns indexed community images with permalinks to their messages', async () => {
    await turnIndexingOn();
    const star = fake.post({
      author: alice,
      content: '',
      attachments: [fake.addAttachment(await png('#ee1111'), 'red star.png', 'image/png')],
    });
    fake.post({
      author: admin,
      content: '',
      attachments: [fake.addAttachment(await png('#1111ee'), 'blue circle.png', 'image/png')],
    });
    const community = await store.communities.ensure({ platform: 'discord', externalId: fake.guildId });
    await fake.waitFor(
      () => engine.payloads.filter((p) => p.kind === 'index').length === 2,
      10_000,
      'two index jobs',
    );
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(await store.images.count(community.id)).toBe(2);

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
    const done = await fake.waitFor(
      () => (content(fake.original(token)).includes('retrieved') ? fake.original(token) : undefined),
      10_000,
      'the find reply',
    );
    const permalink = `https://discord.com/channels/${fake.guildId}/${fake.generalChannelId}/${star.id}`;
    expect(content(done)).toContain(`[original message](<${permalink}>)`);
    expect(done.attachments as unknown[]).toHaveLength(1);
    expect(JSON.stringify(done.components)).toContain('gill:more:');
  });

  it('indexes images posted in threads of an indexed channel, not those of other channels or of bots', async () => {
    await turnIndexingOn();
    const community = await store.communities.ensure({ platform: 'discord', externalId: fake.guildId });
    expect((await store.communities.getConfig(community.id)).indexedChannels).toEqual([
      fake.generalChannelId,
    ]);
    const elsewhere = fake.addChannel('elsewhere').id as string;
    const inIndexed = fake.addThread(fake.generalChannelId, alice, 'drawings').id as string;
    const inOther = fake.addThread(elsewhere, alice, 'other drawings').id as string;
    const star = await png('#ee7711');
    const square = await png('#11ee77');
    const generated = await png('#7711ee');

    // Not indexed: a thread of a channel without indexing, and the bot's own image in the indexed one.
    fake.post({
      channelId: inOther,
      author: alice,
      content: '',
      attachments: [fake.addAttachment(square, 'green square.png', 'image/png')],
    });
    fake.post({
      channelId: inIndexed,
      author: fake.botUser,
      content: 'Image 1: generated',
      attachments: [fake.addAttachment(generated, 'gill-generated-1.png', 'image/png')],
    });
    const posted = fake.post({
      channelId: inIndexed,
      author: alice,
      content: '',
      attachments: [fake.addAttachment(star, 'orange star.png', 'image/png')],
    });
    // A mention in the other thread is answered after its messages were handled, indexing included.
    fake.post({ channelId: inOther, author: alice, content: 'barrier', mentionBot: true });
    await fake.waitFor(() => replies(inOther)[0], 10_000, 'the reply in the other thread');
    await fake.waitFor(
      () => engine.payloads.filter((p) => p.kind === 'index').length === 1,
      10_000,
      'the index job',
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(engine.payloads.filter((p) => p.kind === 'index')).toHaveLength(1);
    expect(await store.images.count(community.id)).toBe(1);

    const { token } = fake.interact({
      user: alice,
      command: { name: 'find', options: [{ name: 'query', type: 3, value: 'orange star' }] },
    });
    const done = await fake.waitFor(
      () => (content(fake.original(token)).includes('retrieved') ? fake.original(token) : undefined),
      10_000,
      'the find reply',
    );
    // The link goes to the message in its thread.
    const permalink = `https://discord.com/channels/${fake.guildId}/${inIndexed}/${posted.id}`;
    expect(content(done)).toContain(`[original message](<${permalink}>)`);
    const final = fake
      .callsTo('PATCH', new RegExp(`/webhooks/${fake.applicationId}/${token}/messages/@original$`))
      .at(-1)!;
    expect(final.files.map((f) => sha256(f.data))).toEqual([sha256(star)]);

    // Deleting the message in the thread removes its image.
    fake.deleteMessage(inIndexed, posted.id as string);
    await expect.poll(() => store.images.count(community.id), { timeout: 10_000 }).toBe(0);
  });

  it('refuses an admin command from a non-admin and changes nothing', async () => {
    const { token } = fake.interact({
      user: alice,
      command: {
        name: 'gill',
        options: [{ name: 'generation', type: 1, options: [{ name: 'enabled', type: 5, value: false }] }],
      },
    });
    const answer = await fake.waitFor(
      () => (content(fake.original(token)) ? fake.original(token) : undefined),
      10_000,
      'the refusal',
    );
    expect(content(answer)).toContain('Only admins');
    expect(Number(answer.flags) & 64).toBe(64);
    const community = await store.communities.ensure({ platform: 'discord', externalId: fake.guildId });
    expect((await store.communities.getConfig(community.id)).generationEnabled).toBe(true);

    const { token: adminToken } = fake.interact({
      user: admin,
      command: {
        name: 'gill',
        options: [{ name: 'bias', type: 1, options: [{ name: 'value', type: 10, value: 2.5 }] }],
      },
    });
    await fake.waitFor(
      () => content(fake.original(adminToken)).includes('Settings updated'),
      10_000,
      'the change',
    );
    expect((await store.communities.getConfig(community.id)).retrieveBias).toBe(2.5);
  });

  it('answers a duplicate event once, also when it arrives after a restart', async () => {
    const message = fake.post({ author: alice, content: 'only once please', mentionBot: true });
    const threadId = message.id as string;
    await fake.waitFor(() => replies(threadId)[0], 10_000, 'the reply');
    fake.redeliver(message);
    await stopBot();
    await startBot();
    fake.redeliver(message);
    await fake.waitFor(
      () => fake.callsTo('POST', /\/threads$/).filter((c) => c.status === 400).length === 1,
      10_000,
      'the second thread attempt',
    );
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(replies(threadId)).toHaveLength(1);
    expect(engine.payloads.filter((p) => p.kind === 'chat')).toHaveLength(1);
  });

  it('ends in exactly one reply when the bot restarts mid-job', async () => {
    engine.hold();
    const message = fake.post({ author: alice, content: 'survive a restart', mentionBot: true });
    const threadId = message.id as string;
    await fake.waitFor(
      () => engine.started === 1 && fake.botMessages(threadId).some((m) => content(m).startsWith('⏳')),
      10_000,
      'the job to start',
    );
    await stopBot();
    engine.release();
    const jobs = () => store.jobs.listUndelivered('discord', 10);
    await fake.waitFor(() => engine.payloads.length === 1, 5000);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect((await jobs()).map((j) => j.status)).toEqual(['completed']);
    expect(replies(threadId)).toHaveLength(0);
    await startBot();
    const reply = await fake.waitFor(() => replies(threadId)[0], 10_000, 'the reply after the restart');
    expect(content(reply)).toContain('echo: survive a restart');
    await new Promise((resolve) => setTimeout(resolve, 600));
    expect(fake.botMessages(threadId).filter((m) => m.type === 0)).toHaveLength(1);
    expect(await jobs()).toHaveLength(0);
  });

  it('retries a 429 after Retry-After', async () => {
    fake.rateLimitNext('POST', /^\/channels\/\d+\/messages$/, 1);
    const message = fake.post({ author: alice, content: 'rate limits', mentionBot: true });
    const threadId = message.id as string;
    await fake.waitFor(() => replies(threadId)[0], 15_000, 'the reply');
    const posts = fake.callsTo('POST', new RegExp(`^/channels/${threadId}/messages$`));
    expect(posts.map((c) => c.status)).toEqual([429, 200]);
    expect(posts[1]!.at - posts[0]!.at).toBeGreaterThanOrEqual(950);
    expect(logs.some((l) => l.msg === 'rate limited by Discord; waiting')).toBe(true);
  });
});

describe('Discord adapter: bad input gets a clear message and nothing is lost or duplicated', () => {
  async function mentionWith(attachments: Record<string, unknown>[], text = 'what is this?') {
    const message = fake.post({ author: alice, content: text, mentionBot: true, attachments });
    const reply = await fake.waitFor(() => replies(message.id as string)[0], 10_000, 'the reply');
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(replies(message.id as string)).toHaveLength(1);
    return content(reply);
  }

  it('says which attachment was not an image, too large, corrupt or from a foreign host, and still answers', async () => {
    const good = await png('#00ff00');
    const truncated = good.subarray(0, Math.floor(good.length / 2));
    const foreign = {
      ...fake.addAttachment(good, 'elsewhere.png', 'image/png'),
      url: `${fake.apiUrl}/v10/gateway/bot`,
    };
    const metadata = {
      ...fake.addAttachment(good, 'meta.png', 'image/png'),
      url: 'http://169.254.169.254/latest/meta-data/x.png',
    };
    const big = fake.addAttachment(Buffer.alloc(11 * 1024 * 1024, 1), 'huge.png', 'image/png');
    const text = await mentionWith([
      fake.addAttachment(Buffer.from('just some notes'), 'notes.txt', 'text/plain'),
      fake.addAttachment(Buffer.from('not a png at all'), 'fake.png', 'image/png'),
      fake.addAttachment(truncated, 'broken.png', 'image/png'),
      foreign,
      metadata,
      big,
      fake.addAttachment(good, 'fine.png', 'image/png'),
    ]);
    expect(text).toContain('"notes.txt" is not an image');
    expect(text).toContain('"fake.png" is not an image');
    expect(text).toContain('"broken.png" looks like a png image but is damaged or truncated');
    expect(text).toContain(
      `"elsewhere.png": images are only taken from this platform's own file hosts, not from 127.0.0.1:`,
    );
    expect(text).toContain('"meta.png": images are only taken');
    expect(text).toContain('"huge.png" is 11 MiB');
    expect(text).toContain(`images: ${sha256(good)}`);
    expect(logs.filter((l) => l.msg === 'attachment refused').length).toBe(6);
  });

  it('refuses a prompt over the limit and an unknown subcommand, starting no job', async () => {
    const { token } = fake.interact({
      user: alice,
      command: { name: 'imagine', options: [{ name: 'prompt', type: 3, value: 'x'.repeat(4001) }] },
    });
    await fake.waitFor(
      () => content(fake.original(token)).includes('over 4000 characters'),
      10_000,
      'the refusal',
    );
    const { token: unknown } = fake.interact({
      user: admin,
      command: { name: 'gill', options: [{ name: 'teleport', type: 1, options: [] }] },
    });
    const answer = await fake.waitFor(
      () =>
        content(fake.original(unknown)).includes('Unknown subcommand') ? fake.original(unknown) : undefined,
      10_000,
      'the help',
    );
    expect(content(answer)).toContain('indexing');
    expect(engine.payloads).toHaveLength(0);
    expect(await store.jobs.listUnfinished(10)).toHaveLength(0);
  });

  it('answers in the channel, and logs why, when it may not start threads', async () => {
    fake.failNext('POST', /\/threads$/, 403, 50013, 'Missing Permissions');
    const message = fake.post({ author: alice, content: 'no threads here', mentionBot: true });
    const reply = await fake.waitFor(
      () => replies(fake.generalChannelId)[0],
      10_000,
      'a reply in the channel',
    );
    expect(content(reply)).toContain('echo: no threads here');
    expect((reply.message_reference as { message_id: string }).message_id).toBe(message.id);
    const warning = logs.find((l) => l.msg === 'cannot start a thread; answering in the channel');
    expect(String(warning?.problem)).toContain('Create Public Threads');
  });

  it('falls back to the channel endpoints when the interaction token has expired', async () => {
    engine.hold();
    const { token } = fake.interact({
      user: alice,
      command: {
        name: 'imagine',
        options: [
          { name: 'prompt', type: 3, value: 'slow one' },
          { name: 'steps', type: 4, value: 1 },
        ],
      },
    });
    await fake.waitFor(() => content(fake.original(token)).startsWith('⏳'), 10_000, 'the queued message');
    fake.expireInteraction(token);
    engine.release();
    const reply = await fake.waitFor(
      () => replies(fake.generalChannelId).find((m) => content(m).includes('generated')),
      10_000,
      'the late reply',
    );
    expect(content(reply)).toContain(`<@${alice.id}>`);
    expect((reply.attachments as unknown[]).length).toBe(1);
    await fake.waitFor(
      () => content(fake.original(token)).includes('Finished'),
      5000,
      'the old response tidied',
    );
  });
});

describe('Discord adapter: buttons, deletions and the Message Content intent', () => {
  it('a button works after a restart and starts a new job from the original', async () => {
    const { token } = fake.interact({
      user: alice,
      command: {
        name: 'imagine',
        options: [
          { name: 'prompt', type: 3, value: 'a cat' },
          { name: 'steps', type: 4, value: 1 },
        ],
      },
    });
    const first = await fake.waitFor(
      () => (content(fake.original(token)).includes('generated') ? fake.original(token) : undefined),
      10_000,
    );
    await stopBot();
    await startBot();
    const jobId = String(JSON.stringify(first.components)).match(/gill:regenerate:([\w-]+)/)![1]!;
    const { token: click } = fake.interact({
      user: alice,
      customId: `gill:regenerate:${jobId}`,
      messageId: first.id as string,
    });
    await fake.waitFor(
      () => content(fake.original(click)).includes('generated'),
      10_000,
      'the regenerated image',
    );
    const imagines = engine.payloads.filter((p) => p.kind === 'imagine');
    expect(imagines).toHaveLength(2);
    expect(imagines[1]!.kind === 'imagine' && imagines[1]!.prompt).toBe('a cat');
  });

  it('Cancel on a progress message: only the asker (or an admin) may press it, and nothing is delivered', async () => {
    const bob = fake.addUser('bob');
    engine.hold();
    // A mention takes the only worker and stays there, so the next requests wait in the queue.
    const first = fake.post({ author: alice, content: 'first in line', mentionBot: true });
    const threadId = first.id as string;
    await fake.waitFor(() => engine.started === 1, 10_000, 'the first job to start');
    const { token } = fake.interact({
      user: alice,
      command: {
        name: 'imagine',
        options: [
          { name: 'prompt', type: 3, value: 'wait for me' },
          { name: 'steps', type: 4, value: 1 },
        ],
      },
    });
    const waiting = await fake.waitFor(
      () => {
        const message = fake.original(token);
        return content(message).startsWith('⏳') && cancelIdOf(message) ? message : undefined;
      },
      10_000,
      'the waiting job with its Cancel button',
    );
    const cancelId = cancelIdOf(waiting)!;
    const jobId = cancelId.slice('gill:cancel:'.length);
    expect(await store.jobs.get(jobId)).toMatchObject({ status: 'queued' });
    expect(await queue.position(jobId)).toBe(0);

    const press = async (
      user: FakeUser,
      customId: string,
      channelId = fake.generalChannelId,
      messageId = waiting.id as string,
    ) => {
      const click = fake.interact({ user, customId, channelId, messageId });
      return fake.waitFor(
        () => (content(fake.original(click.token)) ? fake.original(click.token) : undefined),
        10_000,
        `the answer to ${user.username}'s press`,
      );
    };

    // Someone else is refused, privately, and nothing changes.
    const refusal = await press(bob, cancelId);
    expect(content(refusal)).toBe(`⚠️ Only <@${alice.id}> can cancel this.`);
    expect(Number(refusal.flags) & 64).toBe(64);
    expect(await store.jobs.get(jobId)).toMatchObject({ status: 'queued' });
    expect(await queue.position(jobId)).toBe(0);
    expect(content(fake.original(token))).toMatch(/^⏳/);

    // The asker cancels: the job leaves the queue and the message says so, without the button.
    const answer = await press(alice, cancelId);
    expect(content(answer)).toBe('Cancelled.');
    expect(Number(answer.flags) & 64).toBe(64);
    await fake.waitFor(
      () => content(fake.original(token)) === '🚫 Cancelled.',
      10_000,
      'the cancelled message',
    );
    expect(fake.original(token)!.components).toEqual([]);
    expect(await store.jobs.get(jobId)).toMatchObject({ status: 'cancelled' });
    expect(await queue.position(jobId)).toBeNull();

    // A second press changes nothing.
    const again = await press(alice, cancelId);
    expect(content(again)).toBe('⚠️ This request was already cancelled.');

    // An admin may cancel someone else's request; the message says who did.
    const { token: bobs } = fake.interact({
      user: bob,
      command: { name: 'find', options: [{ name: 'query', type: 3, value: 'anything' }] },
    });
    const bobWaiting = await fake.waitFor(
      () => (cancelIdOf(fake.original(bobs)) ? fake.original(bobs) : undefined),
      10_000,
      'bob’s waiting job',
    );
    const bobCancel = cancelIdOf(bobWaiting)!;
    expect(content(await press(admin, bobCancel, fake.generalChannelId, bobWaiting.id as string))).toBe(
      `Cancelled the request of <@${bob.id}>.`,
    );
    await fake.waitFor(
      () => content(fake.original(bobs)) === `🚫 Cancelled by <@${admin.id}>.`,
      10_000,
      'the message naming the admin',
    );

    // The running job finishes and is delivered, without a Cancel button; the cancelled ones never run.
    engine.release();
    const reply = await fake.waitFor(() => replies(threadId)[0], 10_000, 'the first reply');
    expect(content(reply)).toContain('echo: first in line');
    expect(cancelIdOf(reply)).toBeUndefined();
    const progressPost = fake.callsTo('POST', new RegExp(`^/channels/${threadId}/messages$`))[0]!;
    const firstCancel = cancelIdOf(progressPost.body ?? undefined)!;
    expect(firstCancel).toBeTruthy();
    const late = await press(alice, firstCancel, threadId, reply.id as string);
    expect(content(late)).toBe('⚠️ This request has already finished, so there is nothing to cancel.');
    await new Promise((resolve) => setTimeout(resolve, 600));
    expect(engine.payloads.map((p) => p.kind)).toEqual(['chat']);
    expect(content(fake.original(token))).toBe('🚫 Cancelled.');
    expect(content(fake.original(bobs))).toBe(`🚫 Cancelled by <@${admin.id}>.`);
    expect(await store.jobs.listUndelivered('discord', 10)).toHaveLength(0);
  });

  it('refreshes a waiting job’s queue position, and shows an ETA once a job of its kind has run', async () => {
    const bob = fake.addUser('bob');
    const imagine = (prompt: string, user = alice) =>
      fake.interact({
        user,
        command: {
          name: 'imagine',
          options: [
            { name: 'prompt', type: 3, value: prompt },
            { name: 'steps', type: 4, value: 3 },
          ],
        },
      }).token;
    const progressEdits = (token: string) =>
      fake
        .callsTo('PATCH', new RegExp(`/webhooks/${fake.applicationId}/${token}/messages/@original$`))
        .filter((c) => /^(⏳|🎨) /.test(String(c.body?.content)));
    engine.hold();
    // A mention takes the only worker, so both /imagine requests wait, Bob's behind Alice's.
    const first = fake.post({ author: alice, content: 'first in line', mentionBot: true });
    await fake.waitFor(() => engine.started === 1, 10_000, 'the first job to start');
    const ahead = imagine('one');
    const behind = imagine('two', bob);
    const aheadWaiting = await fake.waitFor(
      () => (cancelIdOf(fake.original(ahead)) ? fake.original(ahead) : undefined),
      10_000,
      'the first waiting job',
    );
    await fake.waitFor(
      () => content(fake.original(behind)) === '⏳ Waiting in the queue: 1 job ahead…',
      10_000,
      'the second waiting job',
    );

    // The job ahead leaves the queue: the message of the one behind is brought up to date by itself.
    const click = fake.interact({
      user: alice,
      customId: cancelIdOf(aheadWaiting)!,
      channelId: fake.generalChannelId,
      messageId: aheadWaiting.id as string,
    });
    await fake.waitFor(() => content(fake.original(click.token)) === 'Cancelled.', 10_000, 'the cancel');
    // No /imagine job has run yet, so there is nothing to estimate from.
    await fake.waitFor(
      () => content(fake.original(behind)) === '⏳ Next in line…',
      10_000,
      'the refreshed position',
    );
    const edits = progressEdits(behind);
    for (let i = 1; i < edits.length; i++)
      expect(edits[i]!.at - edits[i - 1]!.at).toBeGreaterThanOrEqual(950);

    // Once it has run, the next /imagine that waits says when it should be done.
    engine.release();
    await fake.waitFor(() => replies(first.id as string)[0], 10_000, 'the first reply');
    await fake.waitFor(
      () => ((fake.original(behind)?.attachments as unknown[] | undefined)?.length ? true : undefined),
      10_000,
      'the second image',
    );
    engine.hold();
    const second = fake.post({ author: alice, content: 'second in line', mentionBot: true });
    await fake.waitFor(() => engine.started === 3, 10_000, 'the next mention to start');
    const later = imagine('three');
    const before = Math.floor(Date.now() / 1000);
    const estimated = await fake.waitFor(
      () => content(fake.original(later)).match(/^⏳ Next in line… \(ready <t:(\d+):R>\)$/),
      10_000,
      'the ETA',
    );
    const at = Number(estimated[1]);
    expect(at).toBeGreaterThanOrEqual(before);
    expect(at).toBeLessThan(before + 60);
    engine.release();
    await fake.waitFor(() => replies(second.id as string)[0], 10_000, 'the second reply');
  });

  it('removes a deleted message’s images from the index', async () => {
    const community = await store.communities.ensure({ platform: 'discord', externalId: fake.guildId });
    await store.communities.updateConfig(community.id, { indexedChannels: [fake.generalChannelId] });
    const before = await store.images.count(community.id);
    const posted = fake.post({
      author: alice,
      content: '',
      attachments: [fake.addAttachment(await png('#123456'), 'pic.png', 'image/png')],
    });
    await fake.waitFor(() => engine.payloads.some((p) => p.kind === 'index'), 10_000, 'indexing');
    expect(await store.images.count(community.id)).toBe(before + 1);
    fake.deleteMessage(fake.generalChannelId, posted.id as string);
    await fake.waitFor(
      () => logs.some((l) => l.msg === 'deleted message removed from the index'),
      10_000,
      'the removal',
    );
    expect(await store.images.count(community.id)).toBe(before);
  });

  it('`gill discord register` puts the commands in place, /gill for admins only', async () => {
    let out = '';
    const sink = new Writable({
      write(chunk, _enc, done) {
        out += String(chunk);
        done();
      },
    });
    await runRegister(config, { guild: fake.guildId }, sink);
    const put = fake.callsTo(
      'PUT',
      new RegExp(`^/applications/${fake.applicationId}/guilds/${fake.guildId}/commands$`),
    );
    expect(put).toHaveLength(1);
    const commands = put[0]!.body as unknown as {
      name: string;
      default_member_permissions?: string | null;
    }[];
    expect(commands.map((c) => c.name)).toEqual(['imagine', 'find', 'gill', 'gill-forget', 'gill-index-me']);
    expect(commands.find((c) => c.name === 'gill')?.default_member_permissions).toBe(String(1 << 5));
    expect(commands.find((c) => c.name === 'gill-forget')?.default_member_permissions ?? null).toBeNull();
    expect(commands.find((c) => c.name === 'gill-index-me')?.default_member_permissions ?? null).toBeNull();
    expect(out).toContain('Registered /imagine, /find, /gill, /gill-forget, /gill-index-me in server');
    await expect(runRegister(config, { guild: 'nope' }, sink)).rejects.toThrow(
      '--guild must be a Discord server id',
    );
  });

  it('records a reply that can never be delivered (missing permissions) once, with a clear log', async () => {
    fake.failNext('POST', /^\/channels\/\d+\/messages$/, 403, 50013, 'Missing Permissions', 10);
    const message = fake.post({ author: alice, content: 'nobody hears me', mentionBot: true });
    const error = await fake.waitFor(
      () => logs.find((l) => l.msg === 'reply cannot be delivered: missing permissions or channel gone'),
      10_000,
      'the log line',
    );
    expect(String(error.problem)).toContain('Send Messages');
    await new Promise((resolve) => setTimeout(resolve, 600));
    expect(await store.jobs.listUndelivered('discord', 10)).toHaveLength(0);
    expect(replies(message.id as string)).toHaveLength(0);
  });

  it('without the Message Content intent, works on mentions and skips unmentioned follow-ups', async () => {
    expect(describeMessageContent({ DISCORD_MESSAGE_CONTENT: false }).lines.join('\n')).toContain(
      'follow-ups in a thread',
    );
    await stopBot();
    await startBot({ DISCORD_MESSAGE_CONTENT: 'false' });
    expect(fake.intents & (1 << 15)).toBe(0);
    const message = fake.post({ author: alice, content: 'hi without intent', mentionBot: true });
    const threadId = message.id as string;
    await fake.waitFor(() => replies(threadId)[0], 10_000, 'the reply');
    fake.post({ channelId: threadId, author: alice, content: 'unmentioned follow-up' });
    fake.post({ channelId: threadId, author: alice, content: 'mentioned follow-up', mentionBot: true });
    const second = await fake.waitFor(() => replies(threadId)[1], 10_000, 'the second reply');
    expect(content(second)).toContain('echo: mentioned follow-up');
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(replies(threadId)).toHaveLength(2);
  });
});

describe('Discord adapter: retrieval shows only what the viewer’s channel may see', () => {
  /** Asks /find as `user` in `channelId` and returns the finished reply's text. */
  async function find(user: FakeUser, channelId: string, query: string): Promise<string> {
    const { token } = fake.interact({
      user,
      channelId,
      command: {
        name: 'find',
        options: [
          { name: 'query', type: 3, value: query },
          { name: 'k', type: 4, value: 4 },
        ],
      },
    });
    const done = await fake.waitFor(
      () => (content(fake.original(token)).includes('retrieved') ? fake.original(token) : undefined),
      10_000,
      `the find reply in ${channelId}`,
    );
    return content(done);
  }

  /** Mentions the bot with "show me …" (the engine double retrieves) and returns the reply's text. */
  async function showMe(user: FakeUser, channelId: string, what: string): Promise<string> {
    const message = fake.post({ channelId, author: user, content: `show me ${what}`, mentionBot: true });
    // In a channel the bot answers in a new thread (the message's id); in a thread, in the thread.
    const fromChannel = fake.channels.get(channelId)?.type === 0;
    const where = fromChannel ? (message.id as string) : channelId;
    const before = fromChannel ? 0 : replies(where).length;
    return content(await fake.waitFor(() => replies(where)[before], 10_000, `the reply to ${what}`));
  }

  const link = (channelId: string, messageId: unknown) =>
    `https://discord.com/channels/${fake.guildId}/${channelId}/${String(messageId)}`;

  it('an image from a private thread or channel is found there, never from another channel', async () => {
    await turnIndexingOn();
    const community = await store.communities.ensure({ platform: 'discord', externalId: fake.guildId });
    const bob = fake.addUser('bob');
    const random = fake.addChannel('random').id as string;
    const staff = fake.addChannel('staff', { private: true }).id as string;
    await store.communities.updateConfig(community.id, { indexedChannels: [fake.generalChannelId, staff] });
    const secret = fake.addThread(fake.generalChannelId, alice, 'secret', { private: true }).id as string;

    const cat = fake.post({
      author: alice,
      content: '',
      attachments: [fake.addAttachment(await png('#aa22cc'), 'purple cat.png', 'image/png')],
    });
    const owl = fake.post({
      channelId: secret,
      author: alice,
      content: '',
      attachments: [fake.addAttachment(await png('#bb33dd'), 'purple owl.png', 'image/png')],
    });
    const plan = fake.post({
      channelId: staff,
      author: admin,
      content: '',
      attachments: [fake.addAttachment(await png('#cc44ee'), 'purple plan.png', 'image/png')],
    });
    await fake.waitFor(
      () => engine.payloads.filter((p) => p.kind === 'index').length === 3,
      10_000,
      'three index jobs',
    );
    await expect.poll(() => store.images.count(community.id), { timeout: 10_000 }).toBe(3);

    // Bob, in #random and in #general itself: the public cat, neither the private thread's owl nor #staff's plan.
    for (const channelId of [random, fake.generalChannelId]) {
      const found = await find(bob, channelId, 'purple owl plan');
      expect(found).toContain(link(fake.generalChannelId, cat.id));
      expect(found).not.toContain(String(owl.id));
      expect(found).not.toContain(String(plan.id));
    }
    const said = await showMe(bob, random, 'purple owl');
    expect(said).toContain(link(fake.generalChannelId, cat.id));
    expect(said).not.toContain(String(owl.id));

    // Alice inside the private thread finds its owl, by /find and by a mention; the admin in #staff its plan.
    expect(await find(alice, secret, 'purple owl')).toContain(link(secret, owl.id));
    expect(await showMe(alice, secret, 'purple owl')).toContain(link(secret, owl.id));
    const inStaff = await find(admin, staff, 'purple plan');
    expect(inStaff).toContain(link(staff, plan.id));
    expect(inStaff).not.toContain(String(owl.id));

    const rows = await store.sql.query<{
      message_id: string;
      channel_id: string;
      thread_id: string | null;
      visibility: string;
    }>(
      'SELECT message_id, channel_id, thread_id, visibility FROM images WHERE community_id = $1 ORDER BY message_id',
      [community.id],
    );
    expect(rows).toEqual([
      { message_id: cat.id, channel_id: fake.generalChannelId, thread_id: null, visibility: 'public' },
      { message_id: owl.id, channel_id: fake.generalChannelId, thread_id: secret, visibility: 'private' },
      { message_id: plan.id, channel_id: staff, thread_id: null, visibility: 'private' },
    ]);
  });
});

describe('Discord adapter: indexing has its own lane', () => {
  it('after a message with 6 images in an indexed channel, another member’s /imagine is accepted', async () => {
    await turnIndexingOn();
    const community = await store.communities.ensure({ platform: 'discord', externalId: fake.guildId });
    const waitingIndexJobs = async () =>
      (
        await store.sql.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM jobs WHERE community_id = $1 AND kind = 'index' AND status = 'queued'`,
          [community.id],
        )
      )[0]!.n;
    // A request keeps the one worker busy, so the index jobs wait in the queue, unfinished.
    engine.hold();
    fake.post({ author: admin, content: 'hold on', mentionBot: true });
    await fake.waitFor(() => engine.payloads.some((p) => p.kind === 'chat'), 10_000, 'the busy job');
    const attachments = [];
    for (let i = 0; i < 6; i++)
      attachments.push(fake.addAttachment(await png(`#${i}${i}8844`), `picture ${i}.png`, 'image/png'));
    fake.post({ author: alice, content: 'six at once', attachments });
    await expect.poll(waitingIndexJobs, { timeout: 10_000 }).toBe(6);

    const bob = fake.addUser('bob');
    const { token } = fake.interact({
      user: bob,
      command: { name: 'imagine', options: [{ name: 'prompt', type: 3, value: 'a fox' }] },
    });
    const first = await fake.waitFor(() => content(fake.original(token)), 10_000, 'the answer to /imagine');
    expect(first).not.toContain('⚠️');
    expect(first).toMatch(/^⏳ /);
    engine.release();
    const done = await fake.waitFor(
      () => (content(fake.original(token)).includes('generated') ? fake.original(token) : undefined),
      15_000,
      'the image',
    );
    expect(done.attachments as unknown[]).toHaveLength(1);
    await expect.poll(waitingIndexJobs, { timeout: 10_000 }).toBe(0);
  });
});

describe('Discord adapter: deletion is complete', () => {
  it('a deleted thread or channel, and an attachment removed by an edit, take their images out', async () => {
    const community = await store.communities.ensure({ platform: 'discord', externalId: fake.guildId });
    const drawings = fake.addChannel('drawings').id as string;
    const thread = fake.addThread(fake.generalChannelId, alice, 'sketches').id as string;
    await store.communities.updateConfig(community.id, {
      indexedChannels: [fake.generalChannelId, drawings],
    });
    const live = async (where: string) =>
      (
        await store.sql.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM images WHERE community_id = $1 AND deleted_at IS NULL
             AND (channel_id = $2 OR thread_id = $2)`,
          [community.id, where],
        )
      )[0]!.n;
    const attach = async (name: string, colour: string) =>
      fake.addAttachment(await png(colour), `${name}.png`, 'image/png');

    fake.post({
      channelId: thread,
      author: alice,
      content: '',
      attachments: [await attach('in thread', '#102030')],
    });
    fake.post({
      channelId: drawings,
      author: alice,
      content: '',
      attachments: [await attach('in channel', '#203040')],
    });
    const [keep, drop] = [await attach('keep', '#304050'), await attach('drop', '#405060')];
    const both = fake.post({ author: alice, content: 'two', attachments: [keep, drop] });
    await expect.poll(() => store.images.count(community.id), { timeout: 10_000 }).toBe(4);
    expect(await live(thread)).toBe(1);

    fake.deleteChannel(thread);
    await expect.poll(() => live(thread), { timeout: 10_000 }).toBe(0);
    fake.deleteChannel(drawings);
    await expect.poll(() => live(drawings), { timeout: 10_000 }).toBe(0);

    fake.userEditsMessage(fake.generalChannelId, both.id as string, { keepAttachments: [keep.id as string] });
    await expect.poll(() => store.images.count(community.id), { timeout: 10_000 }).toBe(1);
    const [left] = await store.sql.query<{ title: string }>(
      'SELECT title FROM images WHERE community_id = $1 AND deleted_at IS NULL',
      [community.id],
    );
    expect(left?.title).toBe('keep.png');
  });
});
