import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type BotCore, createBotCore } from '../src/bots/core/bot-core.ts';
import { plainText } from '../src/bots/core/context.ts';
import type { ImageIngest } from '../src/bots/core/images.ts';
import type { Command, InboundTurn, ThreadMessage } from '../src/bots/core/turn.ts';
import type { ContextItem } from '../src/jobs.ts';
import { createLogger } from '../src/log.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import { connect } from '../src/store/connect.ts';
import type { JobRecord, Store } from '../src/store/types.ts';

/**
 * What the model reads of a thread: people's messages from the platform, and the bot's own turns from
 * the jobs that answered them (text and output images), whatever the bot's rendered messages show or
 * whether they are posted yet. The core on the real store; jobs are finished by hand, as a worker would.
 */

let dataDir: string;
let store: Store;
let queue: MemoryJobQueue;
let core: BotCore;
let redPng: Buffer;
let redHash: string;
let bluePng: string;
const community = { platform: 'discord' as const, externalId: 'guild-ctx' };
const noFetch: ImageIngest = {
  ingest: async () => {
    throw new Error('no attachment is fetched in these tests');
  },
};

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), 'gill-threads-ctx-'));
  store = await connect({ DATABASE_URL: undefined, dataDir });
  queue = new MemoryJobQueue();
  core = createBotCore({ store, queue, logger: createLogger('error'), images: noFetch });
  // One person submits many turns here, leaving them unfinished; the limits have their own tests.
  const { id } = await store.communities.ensure(community);
  await store.communities.updateConfig(id, {
    userJobsPerMinute: 1000,
    userConcurrentJobs: 100,
    communityConcurrentJobs: 100,
  });
  redPng = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#dd2222' } })
    .png()
    .toBuffer();
  redHash = await store.blobs.put(redPng, 'image/png');
  bluePng = await store.blobs.put(
    await sharp({ create: { width: 8, height: 8, channels: 3, background: '#2244dd' } })
      .png()
      .toBuffer(),
    'image/png',
  );
});

afterAll(async () => {
  await queue?.close();
  await store?.close();
  await rm(dataDir, { recursive: true, force: true });
});

const person = (id: string, text: string): ThreadMessage => ({
  id,
  role: 'user',
  authorId: 'u1',
  authorName: 'Alice',
  text,
  attachments: [],
});
const bot = (id: string, text: string): ThreadMessage => ({
  id,
  role: 'assistant',
  authorId: 'b',
  authorName: 'GILL',
  text,
  attachments: [{ id: `a${id}`, url: `https://cdn.example/${id}.png`, name: 'gill-generated-1.png' }],
});

function turn(key: string, thread: string, messages: ThreadMessage[], command: Command = { kind: 'chat' }) {
  return {
    platform: 'discord',
    community,
    user: { id: 'u1', displayName: 'Alice', isAdmin: false },
    channelId: thread,
    threadId: thread,
    command,
    messages,
    idempotencyKey: key,
    replyTarget: { platform: 'discord', channelId: thread, threadId: thread, data: {} },
  } satisfies InboundTurn;
}

async function submit(t: InboundTurn): Promise<JobRecord> {
  const outcome = await core.submit(t);
  if (outcome.status !== 'accepted') throw new Error(`not accepted: ${JSON.stringify(outcome)}`);
  return (await store.jobs.get(outcome.jobId))!;
}

async function finish(job: JobRecord, text: string, hash: string, kind: 'generated' | 'retrieved') {
  await store.jobs.markRunning(job.id);
  await store.jobs.complete(job.id, {
    kind: 'chat',
    text,
    images: [{ kind, hash, mime: 'image/png', width: 8, height: 8, score: 0.3 }],
    decision: { choice: kind === 'generated' ? 'generate' : 'retrieve', pGenerate: 0.6, pRetrieve: 0.4 },
    notes: ['a note'],
    seed: 5,
  });
}

const contextOf = (job: JobRecord): ContextItem[] => (job.payload.kind === 'chat' ? job.payload.context : []);
const seedOf = (job: JobRecord) => (job.payload.kind === 'chat' ? job.payload.seed : undefined);

describe('the conversation the model reads', () => {
  it('takes the bot’s turns from its finished jobs, the same whatever its messages show or whether they are posted', async () => {
    const first = await submit(turn('ctx:1', 'T1', [person('m1', 'draw a big red circle')]));
    await finish(first, 'here is a big red circle.', redHash, 'generated');

    const follow = person('m3', 'now make it blue');
    const rendered = [
      person('m1', 'draw a big red circle'),
      bot(
        'm2',
        'here is a big red circle.\n_Decided to generate (60%) rather than retrieve (40%)._\nImage 1: generated (seed 5)',
      ),
      follow,
    ];
    const progressOnly = [person('m1', 'draw a big red circle'), bot('m2', '🎨 Drawing… step 3/25'), follow];
    const notPosted = [person('m1', 'draw a big red circle'), follow];
    const jobs = [
      await submit(turn('ctx:2a', 'T1', rendered)),
      await submit(turn('ctx:2b', 'T1', progressOnly)),
      await submit(turn('ctx:2c', 'T1', notPosted)),
    ];
    const expected: ContextItem[] = [
      { type: 'text', role: 'user', text: 'draw a big red circle' },
      { type: 'text', role: 'assistant', text: 'here is a big red circle.' },
      { type: 'image', role: 'assistant', hash: redHash },
      { type: 'text', role: 'user', text: 'now make it blue' },
    ];
    for (const job of jobs) {
      expect(contextOf(job)).toEqual(expected);
      expect(job.replyTarget.data.conversation).toEqual({ thread: 'T1/T1', answers: 'm3' });
    }
    // One context, one seed: the same conversation draws the same image.
    expect(new Set(jobs.map(seedOf)).size).toBe(1);
    expect(seedOf(jobs[0]!)).not.toBe(seedOf(first));
  });

  it('leaves out unfinished, failed and cancelled answers, and answers from other threads', async () => {
    const running = await submit(turn('ctx:3', 'T2', [person('n1', 'my favourite colour is green')]));
    await store.jobs.markRunning(running.id);
    const elsewhere = await submit(turn('ctx:4', 'T3', [person('n1', 'my favourite colour is green')]));
    await finish(elsewhere, 'green is a lovely colour.', redHash, 'generated');
    const next = await submit(
      turn('ctx:5', 'T2', [person('n1', 'my favourite colour is green'), person('n2', 'draw a star')]),
    );
    expect(contextOf(next).map((i) => i.role)).toEqual(['user', 'user']);

    await store.jobs.fail(running.id, { message: 'boom', userFacing: false });
    const again = await submit(
      turn('ctx:6', 'T2', [person('n1', 'my favourite colour is green'), person('n3', 'draw a star')]),
    );
    expect(contextOf(again).map((i) => i.role)).toEqual(['user', 'user']);
  });

  it('shows the answer people saw last: a button’s job replaces the one it came from', async () => {
    const first = await submit(turn('ctx:7', 'T4', [person('p1', 'draw a big red circle')]));
    await finish(first, 'here is a big red circle.', redHash, 'generated');
    const retrieved = await submit(
      turn('ctx:8', 'T4', [], { kind: 'button', action: 'retrieve', jobId: first.id }),
    );
    expect(retrieved.replyTarget.data.conversation).toEqual({ thread: 'T4/T4', answers: 'p1' });
    await finish(retrieved, 'here is a big red circle.', bluePng, 'retrieved');
    const next = await submit(
      turn('ctx:9', 'T4', [person('p1', 'draw a big red circle'), person('p2', 'make it smaller')]),
    );
    expect(contextOf(next)).toEqual([
      { type: 'text', role: 'user', text: 'draw a big red circle' },
      { type: 'text', role: 'assistant', text: 'here is a big red circle.' },
      { type: 'image', role: 'assistant', hash: bluePng },
      { type: 'text', role: 'user', text: 'make it smaller' },
    ]);
  });

  it('reads text the same whatever a removed mention left behind', () => {
    expect(plainText('  draw a   red\tcircle  please ')).toBe('draw a red circle please');
    expect(plainText('first line \n  second line')).toBe('first line\nsecond line');
  });
});
