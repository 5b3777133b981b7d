import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { webApi } from '@slack/bolt';
import { REST, type ResponseLike, Routes } from 'discord.js';
import sharp from 'sharp';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { PlatformAdapter } from '../src/bots/core/adapter.ts';
import { startAdapterDelivery } from '../src/bots/core/delivery.ts';
import { DiscordAdapter } from '../src/bots/discord/outbound.ts';
import { restOptions } from '../src/bots/discord/rest.ts';
import { REPLY_EVENT, SlackAdapter } from '../src/bots/slack/outbound.ts';
import type { ReplyTarget, ResultImage } from '../src/jobs.ts';
import { createLogger } from '../src/log.ts';
import { createMetrics, type GillMetrics } from '../src/metrics/metrics.ts';
import { MAX_DELIVERY_ATTEMPTS } from '../src/queue/delivery.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import { connect } from '../src/store/connect.ts';
import type { DeliveryClaim, JobRecord, Store } from '../src/store/types.ts';
import { FakeDiscord } from './fakes/discord.ts';
import { FakeSlack } from './fakes/slack.ts';

/**
 * The crash window of exactly-once delivery: a bot that posts a reply and dies before the store records
 * it. Bot A's store fails at that point (the write that would record the post); its claim lapses and bot
 * B delivers the job again, with the real discord.js REST client and Slack WebClient against the
 * loopback fakes. Exactly one copy of each reply part must be on the platform afterwards.
 */

const LEASE_MS = 300;

let dataDir: string;
let store: Store;
let queue: MemoryJobQueue;
const logs: Record<string, unknown>[] = [];
const logger = createLogger(
  'info',
  new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split('\n').filter(Boolean)) logs.push(JSON.parse(line));
      done();
    },
  }),
);

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), 'gill-crash-'));
  store = await connect({ DATABASE_URL: undefined, dataDir }, { logger });
});

afterAll(async () => {
  await store?.close();
  await rm(dataDir, { recursive: true, force: true });
});

beforeEach(() => {
  queue = new MemoryJobQueue({ backoffMs: 50, logger });
});

afterEach(async () => {
  await queue.close();
});

let jobCounter = 0;

/** A completed chat job whose reply is `parts` messages long on a platform allowing `maxChars` each. */
async function finishedJob(
  replyTarget: ReplyTarget,
  parts: number,
  maxChars: number,
  images: ResultImage[] = [],
): Promise<JobRecord> {
  jobCounter += 1;
  const line = 'x'.repeat(Math.floor(maxChars * 0.6));
  const text = Array.from({ length: parts }, (_, i) => `part ${i} ${line}`).join('\n');
  const { job } = await store.jobs.createOrGet({
    idempotencyKey: `crash-test:${jobCounter}:${Date.now()}`,
    communityId: null,
    payload: {
      kind: 'chat',
      community: { platform: replyTarget.platform, externalId: 'crash-test' },
      context: [{ type: 'text', role: 'user', text: 'a long answer please' }],
      imageMode: 'auto',
      retrieveBias: 0,
      allowGeneration: true,
      allowRetrieval: true,
      excludeImageIds: [],
    },
    replyTarget,
  });
  await store.jobs.markRunning(job.id);
  await store.jobs.complete(job.id, { kind: 'chat', text, images, decision: null, notes: [] });
  return (await store.jobs.get(job.id))!;
}

/**
 * A store that "dies" at `fail`: that call throws instead of reaching the database, and `died` resolves.
 * 'recordFiles' is the write recording that the reply's files were uploaded; 'dead' makes every write
 * throw once `kill` was called.
 */
function dyingStore(fail: 'markDelivered' | 'recordPart' | 'recordFiles' | 'dead'): {
  store: Store;
  died: Promise<void>;
  kill(): void;
} {
  let dead = false;
  let die!: () => void;
  const died = new Promise<void>((resolve) => {
    die = resolve;
  });
  const jobs: Store['jobs'] = {
    ...store.jobs,
    async markDelivered(id, owner, receipt) {
      if (dead) throw new Error('bot A is dead');
      if (fail !== 'markDelivered') return store.jobs.markDelivered(id, owner, receipt);
      die();
      throw new Error('bot A died before recording the delivery');
    },
    async updateReplyTarget(id, data) {
      if (dead) throw new Error('bot A is dead');
      if (fail === 'recordPart' && 'sentParts' in data) {
        die();
        throw new Error('bot A died before recording the posted part');
      }
      if (fail === 'recordFiles' && 'filesUploaded' in data) {
        die();
        throw new Error('bot A died before recording the uploaded files');
      }
      return store.jobs.updateReplyTarget(id, data);
    },
    async renewDelivery(id, owner, leaseMs) {
      if (dead) throw new Error('bot A is dead');
      return store.jobs.renewDelivery(id, owner, leaseMs);
    },
  };
  return {
    store: { ...store, jobs },
    died,
    kill() {
      dead = true;
      die();
    },
  };
}

/** The store, with every delivery claim it hands out recorded in `claims`. */
function claimsSeen(): { store: Store; claims: (DeliveryClaim | null)[] } {
  const claims: (DeliveryClaim | null)[] = [];
  const jobs: Store['jobs'] = {
    ...store.jobs,
    async claimDelivery(id, owner, leaseMs) {
      const claim = await store.jobs.claimDelivery(id, owner, leaseMs);
      claims.push(claim);
      return claim;
    },
  };
  return { store: { ...store, jobs }, claims };
}

function deliverer(adapter: PlatformAdapter, storeOf: Store, owner: string, metrics?: GillMetrics) {
  return startAdapterDelivery({
    store: storeOf,
    queue,
    logger,
    adapter,
    owner,
    leaseMs: LEASE_MS,
    sweepIntervalMs: 50,
    metrics,
  });
}

async function delivered(jobId: string, timeoutMs = 10_000): Promise<JobRecord> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const job = await store.jobs.get(jobId);
    if (job?.deliveredAt) return job;
    if (Date.now() > deadline) throw new Error(`job ${jobId} was not delivered in ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('Discord: a reply posted by a bot that died before recording it is not posted again', () => {
  let fake: FakeDiscord;
  let rest: REST;

  beforeEach(async () => {
    fake = await new FakeDiscord().start();
    rest = new REST(restOptions({ DISCORD_API_URL: fake.apiUrl })).setToken('fake-token');
  });

  afterEach(async () => {
    await fake.close();
  });

  const adapterWith = (storeOf: Store) =>
    new DiscordAdapter({ rest, store: storeOf, logger, applicationId: fake.applicationId });

  it('sends every part with a nonce from the job id and enforce_nonce, and Discord returns the first message', async () => {
    const channelId = fake.generalChannelId;
    const job = await finishedJob(
      { platform: 'discord', channelId, data: { mode: 'thread', userId: '1' } },
      2,
      2000,
    );
    // Bot A posts part 0 and dies before recording it.
    const a = dyingStore('recordPart');
    const botA = deliverer(adapterWith(a.store), a.store, 'bot-a');
    await a.died;
    await botA.close();
    const posts = () => fake.callsTo('POST', new RegExp(`^/channels/${channelId}/messages$`));
    expect(posts()).toHaveLength(1);
    expect(fake.botMessages(channelId)).toHaveLength(1);
    expect((await store.jobs.get(job.id))!.deliveredAt).toBeNull();

    const b = claimsSeen();
    const botB = deliverer(adapterWith(b.store), b.store, 'bot-b');
    await delivered(job.id);
    await botB.close();
    const messages = fake.botMessages(channelId);
    expect(messages.map((m) => String(m.content).slice(0, 6))).toEqual(['part 0', 'part 1']);
    // Bot B took over bot A's lapsed claim, and was told so.
    expect(b.claims.filter(Boolean)).toEqual([{ redelivery: true }]);

    // Bot B sent part 0 again with the same nonce; Discord answered with the message bot A made.
    expect(posts()).toHaveLength(3);
    const nonces = posts().map((c) => c.body?.nonce);
    expect(new Set(nonces).size).toBe(2);
    expect(nonces[1]).toBe(nonces[0]);
    for (const call of posts()) {
      expect(call.body?.enforce_nonce).toBe(true);
      expect(String(call.body?.nonce).length).toBeLessThanOrEqual(25);
    }
  });

  it('an interaction reply in 3 parts, bot A killed after its first follow-up: each part once after restart', async () => {
    const channelId = fake.generalChannelId;
    const { id: interactionId, token } = fake.interact({
      user: fake.addUser('asker'),
      command: { name: 'ask' },
    });
    await rest.post(Routes.interactionCallback(interactionId, token), { body: { type: 5 }, auth: false });
    const job = await finishedJob(
      {
        platform: 'discord',
        channelId,
        data: {
          mode: 'interaction',
          userId: '1',
          interactionToken: token,
          expiresAt: Date.now() + 15 * 60_000,
        },
      },
      3,
      2000,
    );
    // Bot A's REST client and store stop working once its first follow-up (the reply's second message) is created.
    const a = dyingStore('dead');
    let created = 0;
    const restA = new REST({
      ...restOptions({ DISCORD_API_URL: fake.apiUrl }),
      makeRequest: async (url, init) => {
        if (created >= 1) throw new Error('bot A is dead');
        const response = await fetch(url, init as RequestInit);
        if (init.method === 'POST' && /\/messages$|\/webhooks\/\d+\/[^/]+$/.test(new URL(url).pathname)) {
          created += 1;
          a.kill();
        }
        return response as unknown as ResponseLike;
      },
    }).setToken('fake-token');
    const botA = deliverer(
      new DiscordAdapter({ rest: restA, store: a.store, logger, applicationId: fake.applicationId }),
      a.store,
      'bot-a',
    );
    await a.died;
    await botA.close();
    expect(fake.botMessages(channelId).map((m) => String(m.content).slice(0, 6))).toEqual([
      'part 0',
      'part 1',
    ]);

    const botB = deliverer(adapterWith(store), store, 'bot-b');
    await delivered(job.id);
    await botB.close();
    const parts = fake.botMessages(channelId).map((m) => String(m.content).slice(0, 6));
    expect(parts).toEqual(['part 0', 'part 1', 'part 2']);
  });

  it('a webhook edit Discord keeps refusing goes through the channel, then as text saying why', async () => {
    const channelId = fake.generalChannelId;
    const { id: interactionId, token } = fake.interact({
      user: fake.addUser('artist'),
      command: { name: 'imagine' },
    });
    await rest.post(Routes.interactionCallback(interactionId, token), { body: { type: 5 }, auth: false });
    const png = await sharp({ create: { width: 4, height: 4, channels: 3, background: '#f00' } })
      .png()
      .toBuffer();
    const hash = await store.blobs.put(png, 'image/png');
    const image: ResultImage = { kind: 'generated', hash, mime: 'image/png', width: 4, height: 4, score: 0 };
    const job = await finishedJob(
      {
        platform: 'discord',
        channelId,
        data: {
          mode: 'interaction',
          userId: '7',
          interactionToken: token,
          expiresAt: Date.now() + 15 * 60_000,
        },
      },
      1,
      2000,
      [image],
    );
    // Every message carrying the image is refused, on the webhook and in the channel.
    const withFiles = (call: { files: unknown[] }) => call.files.length > 0;
    fake.failNext('PATCH', /@original$/, 400, 50035, 'Invalid Form Body', 100, withFiles);
    fake.failNext(
      'POST',
      /^\/channels\/\d+\/messages$/,
      413,
      40005,
      'Request entity too large',
      100,
      withFiles,
    );
    const bot = deliverer(adapterWith(store), store, 'bot-refused');
    await delivered(job.id);
    await bot.close();
    const reply = fake.botMessages(channelId).filter((m) => String(m.content).includes('part 0'));
    expect(reply).toHaveLength(1);
    expect(String(reply[0]!.content)).toContain('<@7>');
    expect(String(reply[0]!.content)).toContain(
      'The images could not be attached: Discord refused them (error 40005)',
    );
    expect(fake.callsTo('PATCH', /@original$/).filter(withFiles)).toHaveLength(1);
  });

  it('a delivery that keeps failing ends, after a few tries, with a message to the person who asked', async () => {
    const channelId = fake.generalChannelId;
    const job = await finishedJob(
      { platform: 'discord', channelId, data: { mode: 'thread', userId: '9' } },
      1,
      2000,
    );
    const poisoned = (call: { body: Record<string, unknown> | null }) =>
      String(call.body?.content).includes('part 0');
    fake.failNext('POST', /^\/channels\/\d+\/messages$/, 400, 0, 'Bad Request', 1000, poisoned);
    const metrics = createMetrics({ role: 'bot', defaultMetrics: false });
    const bot = deliverer(adapterWith(store), store, 'bot-poisoned', metrics);
    const done = await delivered(job.id, 30_000);
    await bot.close();
    const outcomes = Object.fromEntries(
      (await metrics.deliveries.get()).values.map((v) => [v.labels.outcome, v.value]),
    );
    expect(outcomes).toEqual({ failed: MAX_DELIVERY_ATTEMPTS, gave_up: 1 });
    expect(done.replyTarget.data).toBeDefined();
    const notice = fake.botMessages(channelId).filter((m) => String(m.content).startsWith('<@9>'));
    expect(notice).toHaveLength(1);
    expect(String(notice[0]!.content)).toContain('could not post the answer');
    expect(fake.callsTo('POST', /^\/channels\/\d+\/messages$/).filter(poisoned)).toHaveLength(
      MAX_DELIVERY_ATTEMPTS,
    );
  });

  it('a nonce of another job, or of another part, creates its own message', async () => {
    const channelId = fake.generalChannelId;
    const target: ReplyTarget = { platform: 'discord', channelId, data: { mode: 'thread', userId: '1' } };
    const first = await finishedJob(target, 2, 2000);
    const second = await finishedJob(target, 1, 2000);
    const bot = deliverer(adapterWith(store), store, 'bot-c');
    await delivered(first.id);
    await delivered(second.id);
    await bot.close();
    expect(fake.botMessages(channelId)).toHaveLength(3);
  });
});

describe('Slack: a re-delivery finds the parts already posted by their metadata', () => {
  let fake: FakeSlack;
  let client: webApi.WebClient;

  beforeAll(async () => {
    fake = await FakeSlack.start();
    client = new webApi.WebClient(fake.botToken, {
      slackApiUrl: fake.apiUrl,
      retryConfig: { retries: 0 },
    });
  });

  afterAll(async () => {
    await fake?.close();
  });

  const adapterWith = (storeOf: Store) => new SlackAdapter({ client, store: storeOf, logger });
  const reads = () => [...fake.callsOf('conversations.replies'), ...fake.callsOf('conversations.history')];

  it('in a thread: bot A posts part 0 and dies before recording it; bot B posts only part 1', async () => {
    const root = fake.userMessage({ channel: 'CTHREAD', user: 'UPLAIN', text: 'a long answer please' });
    const job = await finishedJob(
      { platform: 'slack', channelId: 'CTHREAD', threadId: root.ts, data: { userId: 'UPLAIN' } },
      2,
      3900,
    );
    const readsBefore = reads().length;
    const a = dyingStore('recordPart');
    const botA = deliverer(adapterWith(a.store), a.store, 'bot-a');
    await a.died;
    await botA.close();
    // A first delivery posts without reading the thread first.
    expect(reads()).toHaveLength(readsBefore);
    const posted = fake.botMessages('CTHREAD', root.ts);
    expect(posted).toHaveLength(1);
    expect(posted[0]!.metadata).toEqual({
      event_type: REPLY_EVENT,
      event_payload: { job_id: job.id, part: 0 },
    });

    const botB = deliverer(adapterWith(store), store, 'bot-b');
    const done = await delivered(job.id);
    await botB.close();

    const replies = fake.callsOf('conversations.replies').slice(-1);
    expect(reads()).toHaveLength(readsBefore + 1);
    expect(String(replies[0]!.params.include_all_metadata)).toBe('true');
    const messages = fake.botMessages('CTHREAD', root.ts);
    expect(messages.map((m) => m.text.slice(0, 6))).toEqual(['part 0', 'part 1']);
    expect(messages.map((m) => m.metadata?.event_payload.part)).toEqual([0, 1]);
    expect(done.replyTarget.data.messageTs).toEqual(messages.map((m) => m.ts));
  });

  it('in a channel: the same, read from the channel history, ignoring another job’s reply', async () => {
    // Another job's reply in the same channel, with the same text, must not be taken for this one's.
    const other = await finishedJob(
      { platform: 'slack', channelId: 'CCHAN', data: { userId: 'U2' } },
      2,
      3900,
    );
    const first = deliverer(adapterWith(store), store, 'bot-0');
    await delivered(other.id);
    await first.close();
    const job = await finishedJob({ platform: 'slack', channelId: 'CCHAN', data: { userId: 'U1' } }, 2, 3900);
    const a = dyingStore('recordPart');
    const botA = deliverer(adapterWith(a.store), a.store, 'bot-a');
    await a.died;
    await botA.close();
    expect(fake.botMessages('CCHAN')).toHaveLength(3);
    expect(fake.callsOf('conversations.history')).toHaveLength(0);

    const botB = deliverer(adapterWith(store), store, 'bot-b');
    await delivered(job.id);
    await botB.close();

    const history = fake.callsOf('conversations.history');
    expect(history.length).toBeGreaterThanOrEqual(1);
    expect(String(history[0]!.params.include_all_metadata)).toBe('true');
    const messages = fake.botMessages('CCHAN');
    expect(messages).toHaveLength(4);
    expect(
      messages.filter((m) => m.metadata?.event_payload.job_id === job.id).map((m) => m.text.slice(0, 6)),
    ).toEqual(['part 0', 'part 1']);
    expect(logs.some((l) => l.msg === 'reply part already posted; not again' && l.jobId === job.id)).toBe(
      true,
    );
  });
});

describe('Slack: one copy of each part and file, also when a call outlives the lease or the bot dies mid-reply', () => {
  let fake: FakeSlack;
  let client: webApi.WebClient;

  beforeAll(async () => {
    fake = await FakeSlack.start();
    client = new webApi.WebClient(fake.botToken, { slackApiUrl: fake.apiUrl, retryConfig: { retries: 0 } });
  });

  afterAll(async () => {
    await fake?.close();
  });

  afterEach(() => {
    fake.pageSize = 1000;
  });

  const adapterWith = (storeOf: Store) => new SlackAdapter({ client, store: storeOf, logger });

  it('two bot processes, chat.postMessage slower than the lease: each part posted once', async () => {
    const root = fake.userMessage({ channel: 'CSLOW', user: 'UPLAIN', text: 'a long answer please' });
    const job = await finishedJob(
      { platform: 'slack', channelId: 'CSLOW', threadId: root.ts, data: { userId: 'UPLAIN' } },
      2,
      3900,
    );
    fake.slowNext('chat.postMessage', LEASE_MS * 4, 2);
    const botA = deliverer(adapterWith(store), store, 'bot-a');
    const botB = deliverer(adapterWith(store), store, 'bot-b');
    await delivered(job.id);
    // Anything still in flight from the other process lands within this time.
    await new Promise((resolve) => setTimeout(resolve, LEASE_MS * 6));
    await Promise.all([botA.close(), botB.close()]);
    const messages = fake.botMessages('CSLOW', root.ts);
    expect(messages.map((m) => m.text.slice(0, 6))).toEqual(['part 0', 'part 1']);
  });

  it('bot killed after its file upload completed and before recording it: one file after restart', async () => {
    const root = fake.userMessage({ channel: 'CFILE', user: 'UPLAIN', text: 'draw me something' });
    for (let i = 0; i < 4; i++)
      fake.userMessage({ channel: 'CFILE', user: 'UPLAIN', text: `chatter ${i}`, threadTs: root.ts });
    const png = await sharp({ create: { width: 4, height: 4, channels: 3, background: '#0f0' } })
      .png()
      .toBuffer();
    const hash = await store.blobs.put(png, 'image/png');
    const job = await finishedJob(
      { platform: 'slack', channelId: 'CFILE', threadId: root.ts, data: { userId: 'UPLAIN' } },
      1,
      3900,
      [{ kind: 'generated', hash, mime: 'image/png', width: 4, height: 4, score: 0 }],
    );
    // Slack answers the thread two messages a page: the file share is on the last page.
    fake.pageSize = 2;
    const a = dyingStore('recordFiles');
    const botA = deliverer(adapterWith(a.store), a.store, 'bot-a');
    await a.died;
    await botA.close();
    expect(fake.uploads.filter((u) => u.channel === 'CFILE')).toHaveLength(1);

    const botB = deliverer(adapterWith(store), store, 'bot-b');
    await delivered(job.id);
    await botB.close();
    const uploads = fake.uploads.filter((u) => u.channel === 'CFILE');
    expect(uploads).toHaveLength(1);
    expect(uploads[0]!.title).toBe('gill-generated-1.png');
    expect(
      fake.callsOf('conversations.replies').filter((c) => c.params.ts === root.ts).length,
    ).toBeGreaterThan(1);
  });
});
