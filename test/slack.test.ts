import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type SlackHandle, startSlack } from '../src/bots/slack/index.ts';
import { type Config, loadConfig } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import { runJobs } from '../src/queue/worker.ts';
import { connect } from '../src/store/connect.ts';
import type { Store } from '../src/store/types.ts';
import {
  eventCallback,
  type FakeMessage,
  FakeSlack,
  mentionEnvelope,
  messageEnvelope,
  type SlackRequestTarget,
  sendBlockAction,
  sendEvent,
  sendSlashCommand,
  signSlackRequest,
} from './fakes/slack.ts';
import { EchoEngine, embedText, png, sha256 } from './support/echo-engine.ts';

/**
 * The Slack adapter end to end: a real Bolt app (HTTP receiver with its signature check, WebClient)
 * against the loopback fake Slack, signed requests, the real store on PGlite, the in-process queue and
 * worker loop, and an engine double that answers from what it was given.
 */

const SECRET = 'test-signing-secret';

let dataDir: string;
let fake: FakeSlack;
let store: Store;
let queue: MemoryJobQueue;
let engine: EchoEngine;
let worker: { close(): Promise<void> };
let config: Config;
let slack: SlackHandle;
let target: SlackRequestTarget;
const logLines: Record<string, unknown>[] = [];
const logger = createLogger(
  'info',
  new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split('\n').filter(Boolean)) logLines.push(JSON.parse(line));
      done();
    },
  }),
);

async function startBot(): Promise<void> {
  slack = await startSlack({
    config,
    store,
    queue,
    logger,
    listen: { host: '127.0.0.1', port: 0 },
    sweepIntervalMs: 300,
  });
  target = { url: slack.eventsUrl!, signingSecret: SECRET };
}

/** The bot's message in a thread whose text contains `needle`, once it is there (edits included). */
function botReply(channel: string, threadTs: string | undefined, needle: string): Promise<FakeMessage> {
  return fake.waitFor(
    () => fake.botMessages(channel, threadTs).find((m) => m.text.includes(needle)),
    15_000,
    `a bot message containing "${needle}" in ${channel}/${threadTs}`,
  );
}

function responseTo(responseId: string) {
  return fake.waitFor(
    () => fake.responses.find((r) => r.id === responseId)?.body,
    10_000,
    `a response to ${responseId}`,
  );
}

async function mention(
  channel: string,
  user: string,
  text: string,
  eventId: string,
  extra: { threadTs?: string } = {},
) {
  const message = fake.userMessage({
    channel,
    user,
    text: `<@${fake.botUserId}> ${text}`,
    threadTs: extra.threadTs,
  });
  const response = await sendEvent(target, mentionEnvelope(fake, message, eventId));
  expect(response.status).toBe(200);
  // Slack also sends the plain message event for a mention; it must not produce a second answer.
  await sendEvent(target, messageEnvelope(fake, message, `${eventId}-msg`));
  return message;
}

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), 'gill-slack-'));
  fake = await FakeSlack.start();
  fake.addUser('UADMIN', { admin: true });
  fake.addUser('UOWNER', { owner: true });
  fake.addUser('UPLAIN');
  fake.addUser('ULISTED');
  config = loadConfig({
    SLACK_BOT_TOKEN: fake.botToken,
    SLACK_SIGNING_SECRET: SECRET,
    SLACK_API_URL: fake.apiUrl,
    SLACK_ADMIN_USERS: 'ULISTED',
    GILL_DATA_DIR: dataDir,
  });
  store = await connect(config);
  // Many jobs come from few users here; the limits have their own tests in the core.
  const community = await store.communities.ensure({ platform: 'slack', externalId: fake.teamId });
  await store.communities.updateConfig(community.id, {
    userJobsPerMinute: 120,
    userConcurrentJobs: 20,
    communityConcurrentJobs: 200,
  });
  queue = new MemoryJobQueue({ backoffMs: 50, logger });
  // Eight steps 200 ms apart: more than the one-a-second progress throttle lets through.
  engine = new EchoEngine(store, { steps: 8, stepMs: 200 });
  worker = runJobs({ queue, store, engine, logger });
  await startBot();
});

afterAll(async () => {
  if (process.env.SLACK_TEST_LOG) {
    const { writeFile } = await import('node:fs/promises');
    await writeFile(process.env.SLACK_TEST_LOG, logLines.map((l) => JSON.stringify(l)).join('\n'));
  }
  await slack?.stop();
  await worker?.close();
  await queue?.close();
  await store?.close();
  await fake?.close();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('Slack adapter', () => {
  it('checks the token at start and answers url_verification', async () => {
    expect(fake.callsOf('auth.test').length).toBeGreaterThan(0);
    const body = JSON.stringify({ token: 't', challenge: 'abc123', type: 'url_verification' });
    const response = await fetch(target.url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...signSlackRequest(SECRET, body) },
      body,
    });
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ challenge: 'abc123' });
  });

  it('answers a mention in a channel in a thread under it, and follow-ups in that thread without a mention', async () => {
    const root = await mention('CMENTION', 'UPLAIN', 'hello there', 'EvMention1');
    const reply = await botReply('CMENTION', root.ts, 'echo: hello there');
    expect(reply.thread_ts).toBe(root.ts);
    // The progress message was edited into the reply: one bot message in the thread.
    expect(fake.botMessages('CMENTION', root.ts)).toHaveLength(1);
    expect(fake.callsOf('chat.update').some((c) => c.params.ts === reply.ts)).toBe(true);

    const followUp = fake.userMessage({
      channel: 'CMENTION',
      user: 'UPLAIN',
      text: 'and what about cats?',
      threadTs: root.ts,
    });
    expect((await sendEvent(target, messageEnvelope(fake, followUp, 'EvFollow1'))).status).toBe(200);
    await botReply('CMENTION', root.ts, 'echo: and what about cats?');
    const chat = engine.payloads.filter((p) => p.kind === 'chat').at(-1)!;
    expect(
      chat.kind === 'chat' &&
        chat.context.map((item) => [item.role, item.type === 'text' ? item.text : item.hash]),
    ).toEqual([
      ['user', 'hello there'],
      ['assistant', expect.stringContaining('echo: hello there')],
      ['user', 'and what about cats?'],
    ]);
    // Built from events: the thread was never re-read.
    expect(fake.callsOf('conversations.replies')).toHaveLength(0);

    // A message in a thread the bot is not part of is left alone.
    const other = fake.userMessage({ channel: 'CMENTION', user: 'UPLAIN', text: 'just chatting' });
    const aside = fake.userMessage({
      channel: 'CMENTION',
      user: 'UPLAIN',
      text: 'between people',
      threadTs: other.ts,
    });
    await sendEvent(target, messageEnvelope(fake, other, 'EvOther1'));
    await sendEvent(target, messageEnvelope(fake, aside, 'EvOther2'));
    const barrier = await mention('CMENTION', 'UPLAIN', 'barrier', 'EvBarrier1');
    await botReply('CMENTION', barrier.ts, 'echo: barrier');
    expect(fake.botMessages('CMENTION', other.ts)).toHaveLength(0);
  });

  it('reads a thread with two images (downloaded with the bot token) and uses them in the reply', async () => {
    const red = await png('#ff0000');
    const blue = await png('#0000ff');
    const root = fake.userMessage({ channel: 'CIMAGES', user: 'UPLAIN', text: 'look at these' });
    fake.userMessage({
      channel: 'CIMAGES',
      user: 'UPLAIN',
      text: 'first',
      threadTs: root.ts,
      files: [fake.addFile({ name: 'red.png', mimetype: 'image/png', bytes: red })],
    });
    fake.userMessage({
      channel: 'CIMAGES',
      user: 'UOWNER',
      text: 'second',
      threadTs: root.ts,
      files: [fake.addFile({ name: 'blue.png', mimetype: 'image/png', bytes: blue })],
    });
    // These were posted before the bot saw the thread: it reads the thread once.
    const asked = await mention('CIMAGES', 'UPLAIN', 'which is warmer?', 'EvImages1', { threadTs: root.ts });
    const reply = await botReply('CIMAGES', root.ts, 'echo: which is warmer?');
    expect(reply.text).toContain(`images: ${sha256(red)},${sha256(blue)}`);
    expect(fake.callsOf('conversations.replies')).toHaveLength(1);
    expect(fake.fileDownloads.filter((d) => !d.authorized)).toHaveLength(0);
    expect(fake.fileDownloads.length).toBeGreaterThanOrEqual(2);
    expect(asked.thread_ts).toBe(root.ts);

    // The next turn in the thread reuses the cached thread and the stored images.
    const downloads = fake.fileDownloads.length;
    await mention('CIMAGES', 'UPLAIN', 'and now?', 'EvImages2', { threadTs: root.ts });
    await botReply('CIMAGES', root.ts, 'echo: and now?');
    expect(fake.callsOf('conversations.replies')).toHaveLength(1);
    expect(fake.fileDownloads.length).toBe(downloads);
  });

  it('/imagine acknowledges at once, shows progress at most once a second, then posts the image', async () => {
    const updatesBefore = fake.callsOf('chat.update').length;
    const { response } = await sendSlashCommand(fake, target, {
      command: '/imagine',
      text: 'a red square --seed 5 --steps 8',
      user: 'UPLAIN',
      channel: 'CIMAGINE',
    });
    expect(response.status).toBe(200);
    const upload = await fake.waitFor(
      () => fake.uploads.find((u) => u.channel === 'CIMAGINE'),
      20_000,
      'the upload',
    );
    expect(upload.threadTs).toBeUndefined();
    const meta = await sharp(upload.bytes).metadata();
    expect(meta.format).toBe('png');
    const final = await botReply('CIMAGINE', undefined, 'generated (seed 5)');
    expect(JSON.stringify(final.blocks)).toContain('<@UPLAIN> /imagine a red square');
    expect(JSON.stringify(final.blocks)).toMatch(/gill:regenerate:/);

    const imagine = engine.payloads.filter((p) => p.kind === 'imagine').at(-1);
    expect(imagine).toMatchObject({ prompt: 'a red square', seed: 5, steps: 8 });
    const progress = fake
      .callsOf('chat.update')
      .slice(updatesBefore)
      .filter((c) => c.params.ts === final.ts && String(c.params.text).includes('Drawing… step'));
    expect(progress.length).toBeGreaterThan(0);
    // 8 steps arrive 200 ms apart; the throttle shows at most one a second.
    expect(progress.length).toBeLessThan(8);
    for (let i = 1; i < progress.length; i++) {
      expect(progress[i]!.at - progress[i - 1]!.at).toBeGreaterThanOrEqual(900);
    }
    // The upload used the external upload flow.
    expect(fake.callsOf('files.getUploadURLExternal').length).toBeGreaterThan(0);
    expect(fake.callsOf('files.completeUploadExternal').at(-1)?.params.channel_id).toBe('CIMAGINE');
  });

  it('once an /imagine has run, a waiting one says when it should be done', async () => {
    await sendSlashCommand(fake, target, {
      command: '/imagine',
      text: 'a measured square --steps 2',
      user: 'UPLAIN',
      channel: 'CETA',
    });
    await botReply('CETA', undefined, 'generated (seed 7)');
    const startedBefore = engine.started;
    engine.hold();
    try {
      // A mention takes the only worker, so the next /imagine waits in the queue.
      const root = await mention('CETA', 'UPLAIN', 'hold the worker', 'EvEta1');
      await fake.waitFor(() => engine.started === startedBefore + 1, 10_000, 'the mention to start');
      const before = Math.floor(Date.now() / 1000);
      await sendSlashCommand(fake, target, {
        command: '/imagine',
        text: 'wait with an estimate --steps 2',
        user: 'UPLAIN',
        channel: 'CETA',
      });
      const estimated = await fake.waitFor(
        () =>
          fake
            .botMessages('CETA')
            .map((m) =>
              m.text.match(/^⏳ Next in line… \(ready <!date\^(\d+)\^by \{time_secs\}\|in about \d+ s>\)$/),
            )
            .find(Boolean),
        10_000,
        'the ETA on the waiting job',
      );
      const at = Number(estimated![1]);
      expect(at).toBeGreaterThanOrEqual(before);
      expect(at).toBeLessThan(before + 60);
      engine.release();
      await botReply('CETA', root.ts, 'echo: hold the worker');
      await fake.waitFor(
        () => fake.uploads.filter((u) => u.channel === 'CETA').length === 2,
        15_000,
        'the second image',
      );
    } finally {
      engine.release();
    }
  });

  it('buttons under a reply keep working: Regenerate runs a new job in a thread under it', async () => {
    await sendSlashCommand(fake, target, {
      command: '/imagine',
      text: 'a blue dot --steps 1',
      user: 'UPLAIN',
      channel: 'CBUTTON',
    });
    const result = await botReply('CBUTTON', undefined, 'generated');
    const actionId = (JSON.stringify(result.blocks).match(/gill:regenerate:[^"]+/) ?? [])[0]!;
    expect(actionId).toBeTruthy();
    const { response } = await sendBlockAction(fake, target, {
      user: 'UPLAIN',
      channel: 'CBUTTON',
      message: result,
      actionId,
    });
    expect(response.status).toBe(200);
    const again = await botReply('CBUTTON', result.ts, 'generated');
    expect(JSON.stringify(again.blocks)).toContain('pressed');
    await fake.waitFor(() => fake.uploads.find((u) => u.channel === 'CBUTTON' && u.threadTs === result.ts));
    const imagines = engine.payloads.filter((p) => p.kind === 'imagine' && p.prompt === 'a blue dot');
    expect(imagines).toHaveLength(2);
  });

  it('/find returns indexed images with links to the messages they were posted in', async () => {
    const { responseId } = await sendSlashCommand(fake, target, {
      command: '/gill',
      text: 'indexing on',
      user: 'UADMIN',
      channel: 'CART',
    });
    expect(String((await responseTo(responseId)).text)).toContain('Settings updated');

    const star = await png('#ffdd00');
    const circle = await png('#00aa44');
    const posts = [
      fake.userMessage({
        channel: 'CART',
        user: 'UPLAIN',
        text: 'my drawing',
        files: [fake.addFile({ name: 'yellow star.png', mimetype: 'image/png', bytes: star })],
      }),
      fake.userMessage({
        channel: 'CART',
        user: 'UOWNER',
        text: 'mine',
        files: [fake.addFile({ name: 'green circle.png', mimetype: 'image/png', bytes: circle })],
      }),
    ];
    for (const [i, post] of posts.entries()) {
      await sendEvent(target, messageEnvelope(fake, { ...post }, `EvArt${i}`));
    }
    const community = await store.communities.ensure({ platform: 'slack', externalId: fake.teamId });
    await expect.poll(() => store.images.count(community.id), { timeout: 10_000 }).toBe(2);
    // Let the embeddings land.
    await expect
      .poll(async () => (await store.images.search(community.id, embedText('yellow star'), 1)).length, {
        timeout: 10_000,
      })
      .toBe(1);

    await sendSlashCommand(fake, target, {
      command: '/find',
      text: 'yellow star --k 1',
      user: 'UPLAIN',
      channel: 'CART',
    });
    const reply = await botReply('CART', undefined, 'retrieved from');
    expect(reply.text).toContain(`<${fake.permalink('CART', posts[0]!.ts)}|original message>`);
    const upload = await fake.waitFor(() => fake.uploads.find((u) => u.channel === 'CART'));
    expect(sha256(upload.bytes)).toBe(sha256(star));

    // Deleting the message removes its image from the index.
    await sendEvent(
      target,
      {
        ...messageEnvelope(fake, posts[0]!, 'EvArtDelete'),
        event: {
          type: 'message',
          subtype: 'message_deleted',
          channel: 'CART',
          deleted_ts: posts[0]!.ts,
          ts: posts[0]!.ts,
          previous_message: { ts: posts[0]!.ts, user: 'UPLAIN', text: 'my drawing' },
        },
      },
      {},
    );
    await expect.poll(() => store.images.count(community.id), { timeout: 10_000 }).toBe(1);
  });

  it("indexes images posted in threads of an indexed channel, not in threads of others, nor the bot's own", async () => {
    const { responseId } = await sendSlashCommand(fake, target, {
      command: '/gill',
      text: 'indexing on',
      user: 'UADMIN',
      channel: 'CTHREADART',
    });
    expect(String((await responseTo(responseId)).text)).toContain('Settings updated');
    const community = await store.communities.ensure({ platform: 'slack', externalId: fake.teamId });
    const indexedIn = async (channels: string[]) =>
      (
        await store.sql.query<{ channel_id: string; message_id: string; permalink: string }>(
          `SELECT channel_id, message_id, permalink FROM images
           WHERE community_id = $1 AND deleted_at IS NULL AND channel_id = ANY($2::text[]) ORDER BY id`,
          [community.id, channels],
        )
      ).map((row) => ({ ...row }));
    const star = await png('#ff8800');
    const square = await png('#008888');
    const drawn = await png('#8800ff');

    const root = fake.userMessage({ channel: 'CTHREADART', user: 'UPLAIN', text: 'post your drawings here' });
    const otherRoot = fake.userMessage({ channel: 'COTHERART', user: 'UPLAIN', text: 'and here' });
    await sendEvent(target, messageEnvelope(fake, root, 'EvThreadArt0'));
    await sendEvent(target, messageEnvelope(fake, otherRoot, 'EvThreadArt1'));
    const elsewhere = fake.userMessage({
      channel: 'COTHERART',
      user: 'UPLAIN',
      text: 'a square',
      threadTs: otherRoot.ts,
      files: [fake.addFile({ name: 'teal square.png', mimetype: 'image/png', bytes: square })],
    });
    await sendEvent(target, messageEnvelope(fake, elsewhere, 'EvThreadArt2'));
    // The bot's own upload in the thread (a file_share from its user, which need not carry a bot_id).
    const ownUpload = fake.userMessage({
      channel: 'CTHREADART',
      user: fake.botUserId,
      text: '',
      threadTs: root.ts,
      files: [fake.addFile({ name: 'gill-generated-1.png', mimetype: 'image/png', bytes: drawn })],
    });
    const uploadEnvelope = messageEnvelope(fake, ownUpload, 'EvThreadArt3');
    await sendEvent(target, { ...uploadEnvelope, event: { ...uploadEnvelope.event, subtype: 'file_share' } });
    const reply = fake.userMessage({
      channel: 'CTHREADART',
      user: 'UOWNER',
      text: 'a star',
      threadTs: root.ts,
      files: [fake.addFile({ name: 'orange star.png', mimetype: 'image/png', bytes: star })],
    });
    await sendEvent(target, messageEnvelope(fake, reply, 'EvThreadArt4'));

    await expect.poll(() => indexedIn(['CTHREADART']), { timeout: 10_000 }).toHaveLength(1);
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(await indexedIn(['CTHREADART', 'COTHERART'])).toEqual([
      { channel_id: 'CTHREADART', message_id: reply.ts, permalink: fake.permalink('CTHREADART', reply.ts) },
    ]);
    await expect
      .poll(
        async () => (await store.images.search(community.id, embedText('orange star'), 1))[0]?.messageId,
        {
          timeout: 10_000,
        },
      )
      .toBe(reply.ts);

    await sendSlashCommand(fake, target, {
      command: '/find',
      text: 'orange star --k 1',
      user: 'UPLAIN',
      channel: 'CTHREADART',
    });
    const found = await botReply('CTHREADART', undefined, 'retrieved from');
    expect(found.text).toContain(`<${fake.permalink('CTHREADART', reply.ts)}|original message>`);
    const upload = await fake.waitFor(() => fake.uploads.find((u) => u.channel === 'CTHREADART'));
    expect(sha256(upload.bytes)).toBe(sha256(star));
  });

  it('retrieval shows only what the viewer’s channel may see: an image from a private channel is found only there; direct messages are never indexed', async () => {
    const community = await store.communities.ensure({ platform: 'slack', externalId: fake.teamId });
    const { indexedChannels } = await store.communities.getConfig(community.id);
    // #CPUBLIC and the private GSECRET are indexed, and so (by mistake) is a direct message channel.
    await store.communities.updateConfig(community.id, {
      indexedChannels: [...indexedChannels, 'CPUBLIC', 'GSECRET', 'DALICE', 'MGROUP'],
    });
    const before = await store.images.count(community.id);
    const posts = {
      cat: fake.userMessage({
        channel: 'CPUBLIC',
        user: 'UPLAIN',
        text: 'a cat',
        files: [fake.addFile({ name: 'violet cat.png', mimetype: 'image/png', bytes: await png('#8800ff') })],
      }),
      owl: fake.userMessage({
        channel: 'GSECRET',
        user: 'UOWNER',
        text: 'an owl',
        files: [fake.addFile({ name: 'violet owl.png', mimetype: 'image/png', bytes: await png('#9911ff') })],
      }),
      dm: fake.userMessage({
        channel: 'DALICE',
        user: 'UOWNER',
        text: 'a bat',
        files: [fake.addFile({ name: 'violet bat.png', mimetype: 'image/png', bytes: await png('#aa22ff') })],
      }),
      group: fake.userMessage({
        channel: 'MGROUP',
        user: 'UOWNER',
        text: 'a bee',
        files: [fake.addFile({ name: 'violet bee.png', mimetype: 'image/png', bytes: await png('#bb33ff') })],
      }),
    };
    for (const [name, post] of Object.entries(posts)) {
      await sendEvent(target, messageEnvelope(fake, { ...post }, `EvScope-${name}`));
    }
    await expect.poll(() => store.images.count(community.id), { timeout: 10_000 }).toBe(before + 2);
    const rows = await store.sql.query<{ channel_id: string; thread_id: string | null; visibility: string }>(
      `SELECT channel_id, thread_id, visibility FROM images WHERE community_id = $1
         AND channel_id IN ('CPUBLIC', 'GSECRET', 'DALICE', 'MGROUP') ORDER BY channel_id`,
      [community.id],
    );
    expect(rows).toEqual([
      { channel_id: 'CPUBLIC', thread_id: null, visibility: 'public' },
      { channel_id: 'GSECRET', thread_id: null, visibility: 'private' },
    ]);
    await expect
      .poll(async () => (await store.images.search(community.id, embedText('violet cat'), 1)).length, {
        timeout: 10_000,
      })
      .toBe(1);
    const catLink = fake.permalink('CPUBLIC', posts.cat.ts);
    const owlLink = fake.permalink('GSECRET', posts.owl.ts);

    // Someone in another channel: /find and a mention show the public cat, never the private owl.
    await sendSlashCommand(fake, target, {
      command: '/find',
      text: 'violet owl --k 4',
      user: 'UPLAIN',
      channel: 'CRANDOM',
    });
    const found = await botReply('CRANDOM', undefined, 'retrieved from');
    expect(found.text).toContain(catLink);
    expect(found.text).not.toContain(owlLink);
    const asked = await mention('CRANDOM', 'UPLAIN', 'show me violet owl', 'EvScopeMention');
    const said = await botReply('CRANDOM', asked.ts, 'retrieved from');
    expect(said.text).toContain(catLink);
    expect(said.text).not.toContain(owlLink);

    // In the private channel itself, the owl is found.
    await sendSlashCommand(fake, target, {
      command: '/find',
      text: 'violet owl --k 1',
      user: 'UOWNER',
      channel: 'GSECRET',
    });
    expect((await botReply('GSECRET', undefined, 'retrieved from')).text).toContain(owlLink);
  });

  it('deletion is complete: a deleted file, and a file removed from its message by an edit, leave the index', async () => {
    const community = await store.communities.ensure({ platform: 'slack', externalId: fake.teamId });
    const { indexedChannels } = await store.communities.getConfig(community.id);
    await store.communities.updateConfig(community.id, { indexedChannels: [...indexedChannels, 'CGONE'] });
    const live = async () =>
      (
        await store.sql.query<{ title: string }>(
          `SELECT title FROM images WHERE community_id = $1 AND channel_id = 'CGONE' AND deleted_at IS NULL
           ORDER BY title`,
          [community.id],
        )
      ).map((row) => row.title);
    const file = async (name: string, colour: string) =>
      fake.addFile({ name, mimetype: 'image/png', bytes: await png(colour) });
    const [kept, dropped, deleted] = [
      await file('kept.png', '#010203'),
      await file('dropped.png', '#020304'),
      await file('deleted.png', '#030405'),
    ];
    const two = fake.userMessage({ channel: 'CGONE', user: 'UPLAIN', text: 'two', files: [kept, dropped] });
    const one = fake.userMessage({ channel: 'CGONE', user: 'UPLAIN', text: 'one', files: [deleted] });
    await sendEvent(target, messageEnvelope(fake, { ...two }, 'EvGone1'));
    await sendEvent(target, messageEnvelope(fake, { ...one }, 'EvGone2'));
    await expect.poll(live, { timeout: 10_000 }).toEqual(['deleted.png', 'dropped.png', 'kept.png']);

    await sendEvent(target, eventCallback(fake, fake.deleteFile(deleted.id), 'EvGone3'));
    await expect.poll(live, { timeout: 10_000 }).toEqual(['dropped.png', 'kept.png']);
    await sendEvent(
      target,
      eventCallback(fake, fake.editMessage(two, 'just one now', { keepFiles: [kept.id] }), 'EvGone4'),
    );
    await expect.poll(live, { timeout: 10_000 }).toEqual(['kept.png']);
  });

  it('an edited message is read with its new text at the next turn, a deleted one not at all, and neither is answered', async () => {
    const lastContext = () => {
      const chat = engine.payloads.filter((p) => p.kind === 'chat').at(-1)!;
      return chat.kind === 'chat'
        ? chat.context.map((item) => [item.role, item.type === 'text' ? item.text : item.hash])
        : [];
    };
    const root = await mention('CEDIT', 'UPLAIN', 'my favourite colour is green', 'EvEdit0');
    await botReply('CEDIT', root.ts, 'echo: my favourite colour is green');
    const said = fake.userMessage({
      channel: 'CEDIT',
      user: 'UPLAIN',
      text: 'I like cats',
      threadTs: root.ts,
    });
    await sendEvent(target, messageEnvelope(fake, said, 'EvEdit1'));
    await botReply('CEDIT', root.ts, 'echo: I like cats');

    // Two edits; the first one's retry arrives last and changes nothing. An edit that adds a mention
    // is not a request.
    const firstEdit = eventCallback(
      fake,
      fake.editMessage(said, `<@${fake.botUserId}> I like dogs`),
      'EvEdit2',
    );
    expect((await sendEvent(target, firstEdit)).status).toBe(200);
    await sendEvent(target, eventCallback(fake, fake.editMessage(said, 'I like birds'), 'EvEdit3'));
    await sendEvent(target, firstEdit, { retryNum: 1, retryReason: 'http_timeout' });
    await new Promise((resolve) => setTimeout(resolve, 300));

    const asked = fake.userMessage({
      channel: 'CEDIT',
      user: 'UPLAIN',
      text: 'what do I like?',
      threadTs: root.ts,
    });
    await sendEvent(target, messageEnvelope(fake, asked, 'EvEdit4'));
    await botReply('CEDIT', root.ts, 'echo: what do I like?');
    expect(lastContext()).toEqual([
      ['user', 'my favourite colour is green'],
      ['assistant', expect.stringContaining('echo: my favourite colour is green')],
      ['user', 'I like birds'],
      ['assistant', expect.stringContaining('echo: I like cats')],
      ['user', 'what do I like?'],
    ]);
    expect(fake.botMessages('CEDIT', root.ts)).toHaveLength(3);

    // Deleting a reply removes it; deleting the root, which has replies, leaves a tombstone: also gone.
    await sendEvent(target, eventCallback(fake, fake.deleteMessage(said), 'EvEdit5'));
    const tombstone = fake.deleteMessage(root);
    expect(tombstone.subtype).toBe('message_changed');
    await sendEvent(target, eventCallback(fake, tombstone, 'EvEdit6'));
    await new Promise((resolve) => setTimeout(resolve, 300));
    const again = fake.userMessage({
      channel: 'CEDIT',
      user: 'UPLAIN',
      text: 'anything left?',
      threadTs: root.ts,
    });
    await sendEvent(target, messageEnvelope(fake, again, 'EvEdit7'));
    await botReply('CEDIT', root.ts, 'echo: anything left?');
    expect(lastContext()).toEqual([
      ['assistant', expect.stringContaining('echo: my favourite colour is green')],
      ['assistant', expect.stringContaining('echo: I like cats')],
      ['user', 'what do I like?'],
      ['assistant', expect.stringContaining('echo: what do I like?')],
      ['user', 'anything left?'],
    ]);
    // All from the events: the thread was never re-read, and no edit or deletion was answered.
    expect(fake.callsOf('conversations.replies').filter((c) => c.params.channel === 'CEDIT')).toHaveLength(0);
    expect(fake.botMessages('CEDIT', root.ts)).toHaveLength(4);
  });

  it('/gill changes settings only for workspace admins or the allowlist, and explains unknown subcommands', async () => {
    const community = await store.communities.ensure({ platform: 'slack', externalId: fake.teamId });
    const plain = await sendSlashCommand(fake, target, {
      command: '/gill',
      text: 'generation off',
      user: 'UPLAIN',
      channel: 'CCONF',
    });
    const refused = await responseTo(plain.responseId);
    expect(refused.response_type).toBe('ephemeral');
    expect(String(refused.text)).toMatch(/Only admins/);
    expect((await store.communities.getConfig(community.id)).generationEnabled).toBe(true);

    const listed = await sendSlashCommand(fake, target, {
      command: '/gill',
      text: 'bias 1.5',
      user: 'ULISTED',
      channel: 'CCONF',
    });
    expect(String((await responseTo(listed.responseId)).text)).toContain('Settings updated');
    expect((await store.communities.getConfig(community.id)).retrieveBias).toBe(1.5);

    const owner = await sendSlashCommand(fake, target, {
      command: '/gill',
      text: 'bias 0',
      user: 'UOWNER',
      channel: 'CCONF',
    });
    expect(String((await responseTo(owner.responseId)).text)).toContain('Settings updated');

    const unknown = await sendSlashCommand(fake, target, {
      command: '/gill',
      text: 'frobnicate',
      user: 'UADMIN',
      channel: 'CCONF',
    });
    const help = String((await responseTo(unknown.responseId)).text);
    expect(help).toContain('Unknown subcommand "frobnicate"');
    expect(help).toContain('/gill indexing on|off');

    const forget = await sendSlashCommand(fake, target, {
      command: '/gill',
      text: 'forget',
      user: 'UPLAIN',
      channel: 'CCONF',
    });
    expect(String((await responseTo(forget.responseId)).text)).toMatch(/index/);
  });

  it('a retried event (same event_id) gets one reply', async () => {
    const message = fake.userMessage({
      channel: 'CDUP',
      user: 'UPLAIN',
      text: `<@${fake.botUserId}> only once`,
    });
    const envelope = mentionEnvelope(fake, message, 'EvDup1');
    const [first, retry] = await Promise.all([
      sendEvent(target, envelope),
      sendEvent(target, envelope, { retryNum: 1, retryReason: 'http_timeout' }),
    ]);
    expect([first.status, retry.status]).toEqual([200, 200]);
    await botReply('CDUP', message.ts, 'echo: only once');
    expect((await sendEvent(target, envelope, { retryNum: 2, retryReason: 'http_error' })).status).toBe(200);
    // A later event in another channel is the barrier: by the time it is answered, a duplicate would be too.
    const barrier = await mention('CDUP2', 'UPLAIN', 'barrier', 'EvDupBarrier');
    await botReply('CDUP2', barrier.ts, 'echo: barrier');
    expect(fake.botMessages('CDUP')).toHaveLength(1);
    expect(
      engine.payloads.filter((p) => p.kind === 'chat' && JSON.stringify(p.context).includes('only once')),
    ).toHaveLength(1);
  });

  it('a restart mid-job still ends in exactly one reply, in the progress message', async () => {
    engine.hold();
    try {
      const message = fake.userMessage({
        channel: 'CRESTART',
        user: 'UPLAIN',
        text: `<@${fake.botUserId}> survive this`,
      });
      const envelope = mentionEnvelope(fake, message, 'EvRestart1');
      await sendEvent(target, envelope);
      const progress = await fake.waitFor(
        () => fake.botMessages('CRESTART', message.ts)[0],
        10_000,
        'the progress message',
      );
      expect(progress.text).toMatch(/Next in line|Reading the conversation/);
      await slack.stop();
      await startBot();
      // Slack retries while the bot was away; the new process knows the event from the store.
      expect((await sendEvent(target, envelope, { retryNum: 1, retryReason: 'http_error' })).status).toBe(
        200,
      );
      engine.release();
      const reply = await botReply('CRESTART', message.ts, 'echo: survive this');
      expect(reply.ts).toBe(progress.ts);
      const barrier = await mention('CRESTART2', 'UPLAIN', 'barrier', 'EvRestartBarrier');
      await botReply('CRESTART2', barrier.ts, 'echo: barrier');
      expect(fake.botMessages('CRESTART')).toHaveLength(1);
    } finally {
      engine.release();
    }
  });

  it('Cancel on a progress message: only the asker (or an admin) may press it, and nothing is delivered', async () => {
    fake.addUser('USTRANGER');
    const cancelIdOf = (m: FakeMessage | undefined) =>
      JSON.stringify(m?.blocks ?? []).match(/gill:cancel:[\w-]+/)?.[0];
    const payloadsBefore = engine.payloads.length;
    const startedBefore = engine.started;
    engine.hold();
    try {
      // A mention takes the only worker and stays there, so the next requests wait in the queue.
      const root = await mention('CCANCEL', 'UPLAIN', 'first in line', 'EvCancel1');
      await fake.waitFor(() => engine.started === startedBefore + 1, 10_000, 'the first job to start');
      await sendSlashCommand(fake, target, {
        command: '/imagine',
        text: 'wait for me --steps 1',
        user: 'UPLAIN',
        channel: 'CCANCEL',
      });
      const progressOf = (needle: string) =>
        fake.waitFor(
          () =>
            fake
              .botMessages('CCANCEL')
              .find((m) => JSON.stringify(m.blocks).includes(needle) && cancelIdOf(m)),
          10_000,
          `the progress message of ${needle}`,
        );
      const waiting = await progressOf('/imagine wait for me');
      expect(waiting.text).toMatch(/^⏳/);
      const cancelId = cancelIdOf(waiting)!;
      const jobId = cancelId.slice('gill:cancel:'.length);
      expect(await store.jobs.get(jobId)).toMatchObject({ status: 'queued' });
      const press = async (user: string, actionId: string, message: FakeMessage) => {
        const { response, responseId } = await sendBlockAction(fake, target, {
          user,
          channel: 'CCANCEL',
          message,
          actionId,
          label: 'Cancel',
        });
        expect(response.status).toBe(200);
        return responseId;
      };

      // Someone else is refused, privately, and nothing changes.
      const refusal = await responseTo(await press('USTRANGER', cancelId, waiting));
      expect(refusal).toMatchObject({
        response_type: 'ephemeral',
        text: '⚠️ Only <@UPLAIN> can cancel this.',
      });
      expect(await store.jobs.get(jobId)).toMatchObject({ status: 'queued' });
      expect(await queue.position(jobId)).not.toBeNull();
      expect(cancelIdOf(fake.botMessages('CCANCEL').find((m) => m.ts === waiting.ts))).toBe(cancelId);

      // The asker cancels: the job leaves the queue and the message says so, without the button.
      await press('UPLAIN', cancelId, waiting);
      const cancelled = await fake.waitFor(
        () => fake.botMessages('CCANCEL').find((m) => m.ts === waiting.ts && m.text === '🚫 Cancelled.'),
        10_000,
        'the cancelled message',
      );
      expect(cancelIdOf(cancelled)).toBeUndefined();
      expect(JSON.stringify(cancelled.blocks)).toContain('<@UPLAIN> /imagine wait for me');
      expect(await store.jobs.get(jobId)).toMatchObject({ status: 'cancelled' });
      expect(await queue.position(jobId)).toBeNull();

      // A second press changes nothing.
      const again = await responseTo(await press('UPLAIN', cancelId, waiting));
      expect(again).toMatchObject({
        response_type: 'ephemeral',
        text: '⚠️ This request was already cancelled.',
      });

      // A workspace admin may cancel someone else's request; the message says who did.
      await sendSlashCommand(fake, target, {
        command: '/find',
        text: 'anything',
        user: 'USTRANGER',
        channel: 'CCANCEL',
      });
      const theirs = await progressOf('/find anything');
      await press('UADMIN', cancelIdOf(theirs)!, theirs);
      await fake.waitFor(
        () =>
          fake
            .botMessages('CCANCEL')
            .find((m) => m.ts === theirs.ts && m.text === '🚫 Cancelled by <@UADMIN>.'),
        10_000,
        'the message naming the admin',
      );

      // The running job finishes and is delivered without a Cancel button; the cancelled ones never run.
      engine.release();
      const reply = await botReply('CCANCEL', root.ts, 'echo: first in line');
      expect(cancelIdOf(reply)).toBeUndefined();
      const barrier = await mention('CCANCEL2', 'UPLAIN', 'barrier', 'EvCancelBarrier');
      await botReply('CCANCEL2', barrier.ts, 'echo: barrier');
      expect(engine.payloads.slice(payloadsBefore).map((p) => p.kind)).toEqual(['chat', 'chat']);
      expect(fake.uploads.some((u) => u.channel === 'CCANCEL')).toBe(false);
      expect(fake.botMessages('CCANCEL').find((m) => m.ts === waiting.ts)?.text).toBe('🚫 Cancelled.');
      expect(fake.responses.filter((r) => r.body.text === 'Cancelled.')).toHaveLength(0);
    } finally {
      engine.release();
    }
  });

  it('retries a Web API call answered 429 after its Retry-After', async () => {
    fake.rateLimit('chat.postMessage', 1);
    const message = await mention('CLIMIT', 'UPLAIN', 'slow down', 'EvLimit1');
    await botReply('CLIMIT', message.ts, 'echo: slow down');
    const posts = fake.callsOf('chat.postMessage').filter((c) => c.params.channel === 'CLIMIT');
    expect(posts).toHaveLength(2);
    expect(posts[1]!.at - posts[0]!.at).toBeGreaterThanOrEqual(1000);
    expect(fake.botMessages('CLIMIT')).toHaveLength(1);
  });

  it('refuses forged and stale signatures with 401 and enqueues nothing', async () => {
    const before = engine.payloads.length;
    const message = fake.userMessage({
      channel: 'CFORGED',
      user: 'UPLAIN',
      text: `<@${fake.botUserId}> let me in`,
    });
    const forged = await sendEvent(target, mentionEnvelope(fake, message, 'EvForged1'), {
      signature: `v0=${'0'.repeat(64)}`,
    });
    expect(forged.status).toBe(401);
    const wrongSecret = await sendEvent(
      { ...target, signingSecret: 'not-the-secret' },
      mentionEnvelope(fake, message, 'EvForged2'),
    );
    expect(wrongSecret.status).toBe(401);
    const stale = await sendEvent(target, mentionEnvelope(fake, message, 'EvForged3'), {
      timestamp: Math.floor(Date.now() / 1000) - 6 * 60,
    });
    expect(stale.status).toBe(401);
    const command = await sendSlashCommand(
      fake,
      { ...target, signingSecret: 'nope' },
      { command: '/imagine', text: 'a forged cat', user: 'UPLAIN', channel: 'CFORGED' },
    );
    expect(command.response.status).toBe(401);

    const barrier = await mention('CFORGED2', 'UPLAIN', 'barrier', 'EvForgedBarrier');
    await botReply('CFORGED2', barrier.ts, 'echo: barrier');
    expect(fake.botMessages('CFORGED')).toHaveLength(0);
    expect(
      engine.payloads
        .slice(before)
        .filter((p) => JSON.stringify(p).includes('let me in') || JSON.stringify(p).includes('forged cat')),
    ).toHaveLength(0);
    // Replaying the forged event correctly signed proves the event ids were not recorded either.
    await sendEvent(target, mentionEnvelope(fake, message, 'EvForged1'));
    await botReply('CFORGED', message.ts, 'echo: let me in');
  });

  it('explains refused attachments: not an image, too large, corrupt, no permission, foreign hosts', async () => {
    const good = await png('#123456');
    const corrupt = (await png('#654321')).subarray(0, 60);
    const files = [
      fake.addFile({ name: 'good.png', mimetype: 'image/png', bytes: good }),
      fake.addFile({ name: 'notes.txt', mimetype: 'text/plain', bytes: Buffer.from('just text') }),
      fake.addFile({ name: 'huge.png', mimetype: 'image/png', bytes: good, size: 50 * 1024 * 1024 }),
      fake.addFile({ name: 'broken.png', mimetype: 'image/png', bytes: corrupt }),
      fake.addFile({ name: 'secret.png', mimetype: 'image/png', bytes: good, denied: true }),
      {
        ...fake.addFile({ name: 'elsewhere.png', mimetype: 'image/png', bytes: good }),
        url_private_download: 'http://169.254.169.254/latest/meta-data.png',
      },
    ];
    const message = fake.userMessage({
      channel: 'CBAD',
      user: 'UPLAIN',
      text: `<@${fake.botUserId}> what do you see?`,
      files,
    });
    await sendEvent(target, mentionEnvelope(fake, message, 'EvBad1'));
    const reply = await botReply('CBAD', message.ts, 'echo: what do you see?');
    expect(reply.text).toContain(`images: ${sha256(good)}`);
    expect(reply.text).toMatch(/"notes\.txt" is not an image/);
    expect(reply.text).toMatch(/"huge\.png" is 50 MiB/);
    expect(reply.text).toMatch(/"broken\.png" .*damaged or truncated|"broken\.png" is not an image/);
    expect(reply.text).toMatch(
      /"secret\.png" could not be read: Slack answered with its sign-in page.*files:read/,
    );
    expect(reply.text).toMatch(/"elsewhere\.png": images are only taken from this platform's own file hosts/);
    expect(logLines.some((l) => l.msg === 'attachment refused' && l.reason === 'foreign_host')).toBe(true);
  });

  it('explains bad command input: over-long prompts, missing prompts, bad options, unknown options', async () => {
    const cases: [string, string, RegExp][] = [
      ['/imagine', 'x'.repeat(4100), /over 4000 characters/],
      ['/imagine', '   ', /Say what to draw/],
      ['/imagine', 'a cat --steps 999', /--steps must be a whole number from 1 to 150/],
      ['/find', 'cats --colour red', /Unknown option --colour/],
      ['/find', '--k 3', /Say what to look for/],
    ];
    for (const [command, text, expected] of cases) {
      const { response, responseId } = await sendSlashCommand(fake, target, {
        command,
        text,
        user: 'UPLAIN',
        channel: 'CINPUT',
      });
      expect(response.status).toBe(200);
      const answer = await responseTo(responseId);
      expect(answer.response_type).toBe('ephemeral');
      expect(String(answer.text)).toMatch(expected);
    }
    expect(fake.botMessages('CINPUT')).toHaveLength(0);
  });

  it('tells the user when it may not post in the channel, and drops the job', async () => {
    fake.failNext('chat.postMessage', 'not_in_channel');
    const { responseId } = await sendSlashCommand(fake, target, {
      command: '/imagine',
      text: 'a hidden thing --steps 1',
      user: 'UPLAIN',
      channel: 'CPRIVATE',
    });
    expect(String((await responseTo(responseId)).text)).toMatch(/Invite me first with `\/invite @gill`/);
    const logged = logLines.find(
      (l) => l.msg === 'job cancelled: cannot post in channel' && l.channelId === 'CPRIVATE',
    );
    expect(logged?.code).toBe('not_in_channel');
    const job = await store.jobs.get(String(logged?.jobId));
    expect(job?.status).toBe('cancelled');
    const barrier = await mention('CPRIVATE2', 'UPLAIN', 'barrier', 'EvPrivateBarrier');
    await botReply('CPRIVATE2', barrier.ts, 'echo: barrier');
    expect((await store.jobs.get(String(logged?.jobId)))?.status).toBe('cancelled');
    expect(fake.uploads.some((u) => u.channel === 'CPRIVATE')).toBe(false);
    expect(fake.botMessages('CPRIVATE')).toHaveLength(0);
  });

  it('in Socket Mode (SLACK_APP_TOKEN), acknowledges envelopes and answers a redelivered event once', async () => {
    await slack.stop();
    slack = await startSlack({
      config: { ...config, SLACK_APP_TOKEN: fake.appToken },
      store,
      queue,
      logger,
      sweepIntervalMs: 300,
    });
    expect(slack.eventsUrl).toBeUndefined();
    await fake.waitFor(() => fake.socketCount > 0, 10_000, 'a Socket Mode connection');
    const message = fake.userMessage({
      channel: 'CSOCKET',
      user: 'UPLAIN',
      text: `<@${fake.botUserId}> over the socket`,
    });
    const payload = eventCallback(
      fake,
      { type: 'app_mention', user: 'UPLAIN', text: message.text, ts: message.ts, channel: 'CSOCKET' },
      'EvSocket1',
    );
    fake.sendSocketEvent(payload, { envelopeId: 'env-1' });
    // Slack redelivers after a slow ack with a new envelope and retry_attempt, but the same event_id.
    fake.sendSocketEvent(payload, { envelopeId: 'env-2', retryAttempt: 1, retryReason: 'timeout' });
    await botReply('CSOCKET', message.ts, 'echo: over the socket');
    await fake.waitFor(
      () => fake.socketAcks.filter((a) => a.envelope_id.startsWith('env-')).length === 2,
      10_000,
      'both acks',
    );
    const barrier = fake.userMessage({
      channel: 'CSOCKET2',
      user: 'UPLAIN',
      text: `<@${fake.botUserId}> barrier`,
    });
    fake.sendSocketEvent(
      eventCallback(
        fake,
        { type: 'app_mention', user: 'UPLAIN', text: barrier.text, ts: barrier.ts, channel: 'CSOCKET2' },
        'EvSocket2',
      ),
      { envelopeId: 'env-3' },
    );
    await botReply('CSOCKET2', barrier.ts, 'echo: barrier');
    expect(fake.botMessages('CSOCKET')).toHaveLength(1);
  });
});
