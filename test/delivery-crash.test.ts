import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { webApi } from '@slack/bolt';
import { REST } from 'discord.js';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { PlatformAdapter } from '../src/bots/core/adapter.ts';
import { startAdapterDelivery } from '../src/bots/core/delivery.ts';
import { DiscordAdapter } from '../src/bots/discord/outbound.ts';
import { REPLY_EVENT, SlackAdapter } from '../src/bots/slack/outbound.ts';
import type { ReplyTarget } from '../src/jobs.ts';
import { createLogger } from '../src/log.ts';
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
async function finishedJob(replyTarget: ReplyTarget, parts: number, maxChars: number): Promise<JobRecord> {
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
  await store.jobs.complete(job.id, { kind: 'chat', text, images: [], decision: null, notes: [] });
  return (await store.jobs.get(job.id))!;
}

/** A store that "dies" at `fail`: that call throws instead of reaching the database, and `died` resolves. */
function dyingStore(fail: 'markDelivered' | 'recordPart'): { store: Store; died: Promise<void> } {
  let die!: () => void;
  const died = new Promise<void>((resolve) => {
    die = resolve;
  });
  const jobs: Store['jobs'] = {
    ...store.jobs,
    async markDelivered(id, owner, receipt) {
      if (fail !== 'markDelivered') return store.jobs.markDelivered(id, owner, receipt);
      die();
      throw new Error('bot A died before recording the delivery');
    },
    async updateReplyTarget(id, data) {
      if (fail === 'recordPart' && 'sentParts' in data) {
        die();
        throw new Error('bot A died before recording the posted part');
      }
      return store.jobs.updateReplyTarget(id, data);
    },
  };
  return { store: { ...store, jobs }, died };
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

function deliverer(adapter: PlatformAdapter, storeOf: Store, owner: string) {
  return startAdapterDelivery({
    store: storeOf,
    queue,
    logger,
    adapter,
    owner,
    leaseMs: LEASE_MS,
    sweepIntervalMs: 50,
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
    rest = new REST({ api: fake.apiUrl }).setToken('fake-token');
  });

  afterEach(async () => {
    await fake.close();
  });

  const adapterWith = (storeOf: Store) =>
    new DiscordAdapter({ rest, store: storeOf, logger, applicationId: fake.applicationId });

  it('sends every part with a nonce from the job id and enforce_nonce, and Discord returns the first messages', async () => {
    const channelId = fake.generalChannelId;
    const job = await finishedJob(
      { platform: 'discord', channelId, data: { mode: 'thread', userId: '1' } },
      2,
      2000,
    );
    const a = dyingStore('markDelivered');
    const botA = deliverer(adapterWith(a.store), a.store, 'bot-a');
    await a.died;
    await botA.close();
    const posts = () => fake.callsTo('POST', new RegExp(`^/channels/${channelId}/messages$`));
    expect(posts()).toHaveLength(2);
    expect(fake.botMessages(channelId)).toHaveLength(2);
    expect((await store.jobs.get(job.id))!.deliveredAt).toBeNull();

    const b = claimsSeen();
    const botB = deliverer(adapterWith(b.store), b.store, 'bot-b');
    await delivered(job.id);
    await botB.close();
    const messages = fake.botMessages(channelId);
    expect(messages.map((m) => String(m.content).slice(0, 6))).toEqual(['part 0', 'part 1']);
    // Bot B took over bot A's lapsed claim, and was told so.
    expect(b.claims.filter(Boolean)).toEqual([{ redelivery: true }]);

    // Bot B sent both parts again, with the same nonces; Discord answered with the messages bot A made.
    expect(posts()).toHaveLength(4);
    const nonces = posts().map((c) => c.body?.nonce);
    expect(new Set(nonces).size).toBe(2);
    expect(nonces.slice(2)).toEqual(nonces.slice(0, 2));
    for (const call of posts()) {
      expect(call.body?.enforce_nonce).toBe(true);
      expect(String(call.body?.nonce).length).toBeLessThanOrEqual(25);
    }
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
