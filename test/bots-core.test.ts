import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBotCore } from '../src/bots/core/bot-core.ts';
import { buttonId, parseButtonId, payloadForButton } from '../src/bots/core/buttons.ts';
import { parseGillText } from '../src/bots/core/commands.ts';
import { buildContext } from '../src/bots/core/context.ts';
import { createFetchGuard, FetchRefusedError, isPublicAddress } from '../src/bots/core/fetch-guard.ts';
import type { ImageIngest } from '../src/bots/core/images.ts';
import { renderProgress, renderReply, splitMessage } from '../src/bots/core/render.ts';
import { startRetentionSweep } from '../src/bots/core/retention.ts';
import type { InboundTurn, ThreadMessage } from '../src/bots/core/turn.ts';
import { type JobResult, UserInputError } from '../src/jobs.ts';
import { createLogger } from '../src/log.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import { connect } from '../src/store/connect.ts';
import type { JobRecord, Store } from '../src/store/types.ts';

const STYLE = { maxChars: 2000, link: (text: string, url: string) => `[${text}](<${url}>)` };

/** Every fenced block in a chunk is closed in that chunk. */
function fencesBalanced(chunk: string): boolean {
  return chunk.split('\n').filter((line) => /^\s*```/.test(line)).length % 2 === 0;
}

describe('splitMessage', () => {
  it('keeps short text whole and drops empty text', () => {
    expect(splitMessage('hello', 2000)).toEqual(['hello']);
    expect(splitMessage('  \n ', 2000)).toEqual([]);
  });

  it('splits at line breaks within the limit', () => {
    const text = Array.from({ length: 100 }, (_, i) => `line ${i} ${'x'.repeat(40)}`).join('\n');
    const chunks = splitMessage(text, 2000);
    expect(chunks.length).toBeGreaterThan(1);
    for (const chunk of chunks) expect(chunk.length).toBeLessThanOrEqual(2000);
    expect(chunks.join('\n')).toBe(text);
  });

  it('moves a code block that fits to the next message instead of cutting it', () => {
    const code = ['```ts', ...Array.from({ length: 40 }, (_, i) => `const v${i} = ${i};`), '```'].join('\n');
    const text = `${'intro '.repeat(250).trim()}\n${code}\nafter`;
    const chunks = splitMessage(text, 2000);
    expect(chunks.every(fencesBalanced)).toBe(true);
    expect(chunks.some((c) => c.includes(code))).toBe(true);
    for (const chunk of chunks) expect(chunk.length).toBeLessThanOrEqual(2000);
  });

  it('splits a code block longer than a message into closed and re-opened blocks with its language', () => {
    const lines = Array.from({ length: 200 }, (_, i) => `print(${i})  # ${'y'.repeat(20)}`);
    const text = ['```python', ...lines, '```'].join('\n');
    const chunks = splitMessage(text, 2000);
    expect(chunks.length).toBeGreaterThan(2);
    for (const chunk of chunks) {
      expect(chunk.length).toBeLessThanOrEqual(2000);
      expect(chunk.startsWith('```python\n')).toBe(true);
      expect(chunk.endsWith('\n```')).toBe(true);
    }
    const body = chunks.flatMap((c) => c.split('\n').slice(1, -1));
    expect(body).toEqual(lines);
  });

  it('closes an unclosed fence and cuts a line with no spaces', () => {
    const chunks = splitMessage(`\`\`\`\n${'a'.repeat(5000)}`, 2000);
    expect(chunks.every(fencesBalanced)).toBe(true);
    expect(chunks.every((c) => c.length <= 2000)).toBe(true);
    expect(chunks.join('').replace(/```|\n/g, '')).toBe('a'.repeat(5000));
  });

  it('respects the Slack limit too', () => {
    const chunks = splitMessage('word '.repeat(3000), 3900);
    expect(chunks.length).toBe(4);
    expect(chunks.every((c) => c.length <= 3900)).toBe(true);
  });
});

function job(partial: Partial<JobRecord>): JobRecord {
  return {
    id: 'job-1',
    idempotencyKey: 'k',
    communityId: 'c',
    authorKey: 'discord:u',
    kind: 'chat',
    payload: {
      kind: 'chat',
      community: { platform: 'discord', externalId: 'g' },
      context: [{ type: 'text', role: 'user', text: 'hi' }],
      imageMode: 'auto',
      retrieveBias: 0,
      allowGeneration: true,
      allowRetrieval: true,
      excludeImageIds: [],
    },
    replyTarget: { platform: 'discord', channelId: 'ch', data: {} },
    status: 'completed',
    result: null,
    error: null,
    attempts: 1,
    createdAt: new Date(),
    updatedAt: new Date(),
    deliveredAt: null,
    ...partial,
  };
}

const HASH = 'a'.repeat(64);

describe('renderReply', () => {
  it('shows the decision, the provenance of each image and the notes, with buttons for the other choice', () => {
    const result: JobResult = {
      kind: 'chat',
      text: 'Here is one from the gallery.',
      images: [
        {
          kind: 'retrieved',
          hash: HASH,
          mime: 'image/png',
          width: 8,
          height: 8,
          score: 0.8123,
          source: {
            imageId: 'img-1',
            permalink: 'https://discord.com/channels/1/2/3',
            authorId: 'u',
            channelId: '2',
            messageId: '3',
          },
        },
      ],
      decision: { choice: 'retrieve', pGenerate: 0.27, pRetrieve: 0.73 },
      notes: ['context trimmed'],
    };
    const reply = renderReply(
      job({
        result,
        replyTarget: { platform: 'discord', channelId: 'c', data: { notes: ['left out a.pdf'] } },
      }),
      STYLE,
    );
    const text = reply.chunks.join('\n');
    expect(text).toContain('Decided to retrieve (73%) rather than generate (27%)');
    expect(text).toContain(
      'Image 1: retrieved from [original message](<https://discord.com/channels/1/2/3>) (similarity 0.81)',
    );
    expect(text).toContain('_left out a.pdf_');
    expect(text).toContain('_context trimmed_');
    expect(reply.images).toEqual([expect.objectContaining({ hash: HASH, fileName: 'gill-retrieved-1.png' })]);
    expect(reply.buttons).toEqual(['more', 'generate']);
  });

  it('says generated and the seed for a generated image', () => {
    const result: JobResult = {
      kind: 'imagine',
      text: '',
      images: [{ kind: 'generated', hash: HASH, mime: 'image/png', width: 8, height: 8, score: 0 }],
      decision: null,
      notes: [],
      seed: 42,
    };
    const reply = renderReply(job({ kind: 'imagine', result }), STYLE);
    expect(reply.chunks).toEqual(['Image 1: generated (seed 42)']);
  });

  it('gives the user-facing error, and hides internal ones behind a plain message', () => {
    const userFacing = renderReply(
      job({ status: 'failed', error: { message: 'The prompt is empty.', userFacing: true } }),
      STYLE,
    );
    expect(userFacing.chunks).toEqual(['⚠️ The prompt is empty.']);
    expect(userFacing.buttons).toEqual([]);
    const internal = renderReply(
      job({ status: 'failed', error: { message: 'CUDA out of memory at 0x7f', userFacing: false } }),
      STYLE,
    );
    expect(internal.chunks.join()).not.toContain('CUDA');
    expect(internal.buttons).toEqual(['regenerate']);
  });

  it('renders progress lines', () => {
    expect(renderProgress({ stage: 'queued', position: 3 })).toBe('⏳ Waiting in the queue: 3 jobs ahead…');
    expect(renderProgress({ stage: 'generating', step: 5, steps: 20 })).toBe('🎨 Drawing… step 5/20');
  });
});

describe('buttons', () => {
  it('round-trips persistent ids within 100 characters and ignores foreign ones', () => {
    const id = buttonId('regenerate', '0f8fad5b-d9cb-469f-a165-70867728950e');
    expect(id.length).toBeLessThanOrEqual(100);
    expect(parseButtonId(id)).toEqual({
      action: 'regenerate',
      jobId: '0f8fad5b-d9cb-469f-a165-70867728950e',
    });
    expect(parseButtonId('other:regenerate:x')).toBeNull();
    expect(parseButtonId('gill:explode:x')).toBeNull();
  });

  it('maps actions to new payloads from the original job', () => {
    const imagine = job({
      kind: 'imagine',
      payload: {
        kind: 'imagine',
        community: { platform: 'discord', externalId: 'g' },
        prompt: 'a fox',
        seed: 1,
      },
    });
    expect(payloadForButton(imagine, 'regenerate', 99)).toMatchObject({
      kind: 'imagine',
      prompt: 'a fox',
      seed: 99,
    });
    expect(payloadForButton(imagine, 'retrieve', 99)).toMatchObject({ kind: 'find', query: 'a fox' });
    const found = job({
      kind: 'find',
      payload: {
        kind: 'find',
        community: { platform: 'discord', externalId: 'g' },
        query: 'fox',
        k: 2,
        excludeImageIds: ['a'],
      },
      result: {
        kind: 'find',
        text: '',
        decision: null,
        notes: [],
        images: [
          {
            kind: 'retrieved',
            hash: HASH,
            mime: 'image/png',
            width: 1,
            height: 1,
            score: 1,
            source: { imageId: 'b', permalink: null, authorId: null, channelId: null, messageId: null },
          },
        ],
      },
    });
    expect(payloadForButton(found, 'more', 1)).toMatchObject({ kind: 'find', excludeImageIds: ['a', 'b'] });
    expect(payloadForButton(job({}), 'generate', 5)).toMatchObject({
      kind: 'chat',
      imageMode: 'generate',
      seed: 5,
    });
  });
});

describe('parseGillText', () => {
  it('reads every subcommand', () => {
    expect(parseGillText('indexing on <#C123|art>', 'C9')).toEqual({
      kind: 'config',
      change: { setting: 'indexing', enabled: true, channelId: 'C123' },
    });
    expect(parseGillText('indexing off', 'C9')).toEqual({
      kind: 'config',
      change: { setting: 'indexing', enabled: false, channelId: 'C9' },
    });
    expect(parseGillText('bias -2.5', 'c')).toEqual({
      kind: 'config',
      change: { setting: 'bias', value: -2.5 },
    });
    expect(parseGillText('context 10', 'c')).toEqual({
      kind: 'config',
      change: { setting: 'context', messages: 10 },
    });
    expect(parseGillText('limits per-minute=3 community=9', 'c')).toEqual({
      kind: 'config',
      change: { setting: 'limits', userJobsPerMinute: 3, communityConcurrentJobs: 9 },
    });
    expect(parseGillText('forget', 'c')).toEqual({ kind: 'forget' });
    expect(parseGillText('', 'c')).toEqual({ kind: 'config', change: { setting: 'show' } });
  });

  it('explains what is wrong, listing the valid subcommands for an unknown one', () => {
    expect(() => parseGillText('teleport now', 'c')).toThrow(
      /Unknown subcommand "teleport". Valid ones:[\s\S]*indexing on\|off/,
    );
    expect(() => parseGillText('bias 11', 'c')).toThrow('The bias must be from -10 to 10, got 11');
    expect(() => parseGillText('context 2.5', 'c')).toThrow('must be a whole number');
    expect(() => parseGillText('generation maybe', 'c')).toThrow('takes "on" or "off"');
    expect(() => parseGillText('limits speed=3', 'c')).toThrow('Unknown limit "speed"');
    expect(() => parseGillText('limits', 'c')).toThrow(UserInputError);
  });
});

/** Stores nothing: hashes the URL, refuses names containing "bad". */
const ingest: ImageIngest = {
  async ingest(attachment) {
    if (attachment.name.includes('bad'))
      throw new FetchRefusedError(`"${attachment.name}" is not an image`, 'not_image');
    return {
      hash: createHash('sha256').update(attachment.url).digest('hex'),
      mime: 'image/png',
      width: 1,
      height: 1,
    };
  },
};

function message(i: number, text: string, images: string[] = []): ThreadMessage {
  return {
    id: String(i),
    role: i % 2 ? 'assistant' : 'user',
    authorId: `u${i % 2}`,
    authorName: i % 2 ? 'GILL' : 'Alice',
    text,
    attachments: images.map((name) => ({ url: `https://cdn.example/${name}`, name })),
  };
}

describe('buildContext', () => {
  it('keeps the newest messages within the count and says how many were left out', async () => {
    const messages = [0, 1, 2, 3, 4].map((i) => message(i, `m${i}`));
    const built = await buildContext(messages, {
      images: ingest,
      budget: { maxMessages: 3, maxTokens: 1000, maxImages: 4 },
    });
    expect(built.items.map((i) => i.type === 'text' && i.text)).toEqual(['m2', 'm3', 'm4']);
    expect(built.notes[0]).toBe(
      'Only the last 3 messages of this thread were read; 2 older ones were left out.',
    );
  });

  it('stops at the token budget but always keeps the message being answered', async () => {
    const messages = [message(0, 'x'.repeat(400)), message(1, 'y'.repeat(400)), message(2, 'z'.repeat(400))];
    const built = await buildContext(messages, {
      images: ingest,
      budget: { maxMessages: 10, maxTokens: 250, maxImages: 4 },
    });
    expect(built.items.map((i) => i.type === 'text' && i.text[0])).toEqual(['y', 'z']);
    expect(built.notes[0]).toContain('1 older one was left out');
    const long = await buildContext([message(0, `start ${'w'.repeat(2000)} end`)], {
      images: ingest,
      budget: { maxMessages: 10, maxTokens: 100, maxImages: 4 },
    });
    expect(long.items[0]!.type === 'text' && long.items[0]!.text.endsWith('end')).toBe(true);
    expect(long.notes).toContain('Your message was too long; only its last part was read.');
  });

  it('interleaves images in order, keeps the newest within the image budget, and notes refusals', async () => {
    const messages = [
      message(0, 'first', ['a.png', 'b.png']),
      message(1, 'answer'),
      message(2, 'second', ['c.png', 'bad.png', 'd.png']),
    ];
    const built = await buildContext(messages, {
      images: ingest,
      budget: { maxMessages: 10, maxTokens: 1000, maxImages: 3 },
    });
    expect(built.items.map((i) => (i.type === 'text' ? i.text : 'img'))).toEqual([
      'first',
      'img',
      'answer',
      'second',
      'img',
      'img',
    ]);
    expect(built.notes).toEqual([
      '"bad.png" is not an image; it was left out.',
      'Only the 3 most recent images of this thread were looked at.',
    ]);
    expect(built.items[3]).toMatchObject({ role: 'user', author: 'Alice' });
    expect(built.items[2]).toMatchObject({ role: 'assistant', author: 'GILL' });
  });

  it('refuses a turn with nothing readable, saying why', async () => {
    await expect(
      buildContext([message(0, '', ['bad.png'])], {
        images: ingest,
        budget: { maxMessages: 5, maxTokens: 100, maxImages: 2 },
      }),
    ).rejects.toThrow('There is nothing I can read here. "bad.png" is not an image; it was left out.');
  });
});

describe('fetch guard', () => {
  let server: http.Server;
  let other: http.Server;
  let origin: string;
  let otherOrigin: string;
  let png: Buffer;

  beforeAll(async () => {
    png = await sharp({ create: { width: 40, height: 30, channels: 3, background: '#336699' } })
      .png()
      .toBuffer();
    const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>');
    server = http.createServer((req, res) => {
      const url = req.url ?? '/';
      if (url === '/img.png') res.writeHead(200, { 'content-type': 'image/png' }).end(png);
      else if (url === '/private.png') {
        if (req.headers.authorization === 'Bearer xoxb-test') res.writeHead(200).end(png);
        else res.writeHead(200, { 'content-type': 'text/html' }).end('<html>sign in</html>');
      } else if (url === '/to-inside') res.writeHead(302, { location: '/img.png' }).end();
      else if (url === '/to-outside') res.writeHead(302, { location: `${otherOrigin}/img.png` }).end();
      else if (url === '/declared-huge') res.writeHead(200, { 'content-length': String(50_000_000) }).end();
      else if (url === '/streamed-huge') {
        res.writeHead(200, { 'content-type': 'image/png' });
        const chunk = Buffer.alloc(64 * 1024, 7);
        let sent = 0;
        const pump = () => {
          while (sent < 40 && res.write(chunk)) sent++;
          if (sent < 40) res.once('drain', pump);
          else res.end();
        };
        pump();
      } else if (url === '/pic.svg') res.writeHead(200, { 'content-type': 'image/svg+xml' }).end(svg);
      else res.writeHead(404).end();
    });
    other = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'image/png' }).end(png));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    otherOrigin = `http://127.0.0.1:${(other.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    server.closeAllConnections();
    other.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await new Promise((resolve) => other.close(resolve));
  });

  const guard = (options: Partial<Parameters<typeof createFetchGuard>[0]> = {}) =>
    createFetchGuard({
      allowed: [{ origin, headers: { authorization: 'Bearer xoxb-test' } }],
      maxBytes: 1024 * 1024,
      ...options,
    });

  async function refusal(promise: Promise<unknown>): Promise<FetchRefusedError> {
    const error = await promise.then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(FetchRefusedError);
    return error as FetchRefusedError;
  }

  it('fetches an image from the configured origin, with that origin’s headers, and follows redirects inside it', async () => {
    const image = await guard().fetchImage(`${origin}/img.png`);
    expect(image).toMatchObject({ mime: 'image/png', width: 40, height: 30 });
    expect(Buffer.from(image.bytes).equals(png)).toBe(true);
    expect((await guard().fetchImage(`${origin}/private.png`)).mime).toBe('image/png');
    expect((await guard().fetchImage(`${origin}/to-inside`)).width).toBe(40);
  });

  it('refuses other origins (another port too), redirects out, and non-http URLs', async () => {
    expect((await refusal(guard().fetchImage(`${otherOrigin}/img.png`, 'x.png'))).reason).toBe(
      'foreign_host',
    );
    expect((await refusal(guard().fetchImage(`${origin}/to-outside`, 'r.png'))).reason).toBe('foreign_host');
    expect((await refusal(guard().fetchImage('http://169.254.169.254/latest/meta-data'))).reason).toBe(
      'foreign_host',
    );
    expect((await refusal(guard().fetchImage('file:///etc/passwd'))).reason).toBe('foreign_host');
    expect((await refusal(guard().fetchImage('not a url'))).reason).toBe('bad_url');
  });

  it('refuses a configured host name that resolves to a private address', async () => {
    const port = (server.address() as AddressInfo).port;
    const byName = createFetchGuard({ allowed: [`http://localhost:${port}`] });
    const error = await refusal(byName.fetchImage(`http://localhost:${port}/img.png`, 'local.png'));
    expect(error.reason).toBe('private_address');
    expect(error.message).toContain('"local.png"');
  });

  it('caps the size from the header and while streaming', async () => {
    expect((await refusal(guard().fetchImage(`${origin}/declared-huge`))).reason).toBe('too_large');
    const streamed = await refusal(guard().fetchImage(`${origin}/streamed-huge`, 'big.png'));
    expect(streamed.reason).toBe('too_large');
    expect(streamed.message).toBe('"big.png" is larger than 1 MiB');
  });

  it('caps pixels, and refuses SVG, web pages and missing files with a reason', async () => {
    const pixels = await refusal(guard({ maxPixels: 1000 }).fetchImage(`${origin}/img.png`, 'wide.png'));
    expect(pixels.message).toBe('"wide.png" is 40×30 pixels; the limit is 1,000 pixels');
    expect((await refusal(guard().fetchImage(`${origin}/pic.svg`))).message).toContain(
      'is a svg file, not a PNG',
    );
    const html = await refusal(createFetchGuard({ allowed: [origin] }).fetchImage(`${origin}/private.png`));
    expect(html.message).toContain('answered with a web page');
    expect((await refusal(guard().fetchImage(`${origin}/gone.png`))).message).toContain('HTTP 404');
  });

  it('knows public from non-public addresses', () => {
    for (const address of [
      '127.0.0.1',
      '10.1.2.3',
      '172.20.0.1',
      '192.168.1.1',
      '169.254.169.254',
      '::1',
      'fd00::1',
      'fe80::1',
      '::ffff:127.0.0.1',
      '0.0.0.0',
    ]) {
      expect(isPublicAddress(address), address).toBe(false);
    }
    for (const address of ['162.159.128.233', '2606:4700::6810:84e5'])
      expect(isPublicAddress(address), address).toBe(true);
  });
});

describe('bot core on the real store', () => {
  let dataDir: string;
  let store: Store;
  let queue: MemoryJobQueue;

  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), 'gill-core-'));
    store = await connect({ DATABASE_URL: undefined, dataDir });
    queue = new MemoryJobQueue();
  });

  afterAll(async () => {
    await queue.close();
    await store.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  const core = () => createBotCore({ store, queue, logger: createLogger('silent'), images: ingest });
  let n = 0;
  function turn(
    command: InboundTurn['command'],
    user = 'u1',
    isAdmin = false,
    key = `key-${++n}`,
  ): InboundTurn {
    return {
      platform: 'playground',
      community: { platform: 'playground', externalId: 'core-tests' },
      user: { id: user, displayName: user, isAdmin },
      channelId: 'general',
      command,
      messages: [message(0, 'hello')],
      idempotencyKey: key,
      replyTarget: { platform: 'playground', channelId: 'general', data: {} },
    };
  }

  it('creates one job per idempotency key', async () => {
    const bot = core();
    const first = await bot.submit(turn({ kind: 'chat' }, 'dup-user', false, 'same-key'));
    expect(first).toMatchObject({ status: 'accepted', position: expect.any(Number) });
    const again = await bot.submit(turn({ kind: 'chat' }, 'dup-user', false, 'same-key'));
    expect(again).toEqual({ status: 'duplicate', jobId: first.status === 'accepted' ? first.jobId : '' });
  });

  it('caps unfinished jobs per user, cancels the refused one, and treats its repeat as a duplicate', async () => {
    const bot = core();
    const community = await store.communities.ensure({ platform: 'playground', externalId: 'core-tests' });
    await store.communities.updateConfig(community.id, { userConcurrentJobs: 2 });
    await bot.submit(turn({ kind: 'imagine', prompt: 'a' }, 'busy'));
    await bot.submit(turn({ kind: 'imagine', prompt: 'b' }, 'busy'));
    const third = await bot.submit(turn({ kind: 'imagine', prompt: 'c' }, 'busy', false, 'third'));
    expect(third).toEqual({
      status: 'refused',
      reason: 'limited',
      message: 'You already have 2 requests in progress (the limit is 2). Please wait for one to finish.',
    });
    expect(await store.jobs.countActive({ communityId: community.id, authorKey: 'playground:busy' })).toBe(2);
    expect(await bot.submit(turn({ kind: 'imagine', prompt: 'c' }, 'busy', false, 'third'))).toMatchObject({
      status: 'duplicate',
    });
  });

  it('rate-limits per user per minute, counting across bot processes sharing the store', async () => {
    // Two bot cores on one store, as two `gill bot` processes on one Postgres.
    const [one, two] = [core(), core()];
    const community = await store.communities.ensure({ platform: 'playground', externalId: 'core-tests' });
    await store.communities.updateConfig(community.id, {
      userJobsPerMinute: 3,
      userConcurrentJobs: 10,
      communityConcurrentJobs: 50,
    });
    for (const [i, bot] of [one, two, one].entries()) {
      expect(await bot.submit(turn({ kind: 'find', query: `q${i}` }, 'fast'))).toMatchObject({
        status: 'accepted',
      });
    }
    const fourth = await two.submit(turn({ kind: 'find', query: 'q3' }, 'fast', false, 'fast-fourth'));
    expect(fourth).toMatchObject({ status: 'refused', reason: 'limited' });
    const message = fourth.status === 'refused' ? fourth.message : '';
    const wait = /^You can start 3 requests per minute\. Please try again in (\d+) s\.$/.exec(message);
    expect(wait, message).not.toBeNull();
    expect(Number(wait![1])).toBeGreaterThan(0);
    expect(Number(wait![1])).toBeLessThanOrEqual(60);
    // A restarted process counts the same minute; the refused request started nothing.
    expect(await core().submit(turn({ kind: 'find', query: 'q4' }, 'fast'))).toMatchObject({
      status: 'refused',
      reason: 'limited',
    });
    expect(await store.jobs.countActive({ communityId: community.id, authorKey: 'playground:fast' })).toBe(3);
    // Someone else is not held back.
    expect(await two.submit(turn({ kind: 'find', query: 'q5' }, 'slow'))).toMatchObject({
      status: 'accepted',
    });

    await store.communities.updateConfig(community.id, { userJobsPerMinute: 1 });
    expect(await one.submit(turn({ kind: 'find', query: 'q6' }, 'slow'))).toEqual({
      status: 'refused',
      reason: 'limited',
      message: expect.stringMatching(/^You can start 1 request per minute\. Please try again in \d+ s\.$/),
    });
  });

  it('indexing has its own lane: its own cap and per-poster rate, never counted against requests', async () => {
    const ref = { platform: 'playground' as const, externalId: 'index-lane' };
    const community = await store.communities.ensure(ref);
    await store.communities.updateConfig(community.id, {
      indexedChannels: ['art'],
      userConcurrentJobs: 1,
      communityConcurrentJobs: 1,
      userJobsPerMinute: 1,
    });
    const bot = createBotCore({
      store,
      queue,
      logger: createLogger('silent'),
      // Keeps each attachment's URL as its bytes, so the gallery rows have their blobs.
      images: {
        ingest: async (a) => ({
          hash: await store.blobs.put(Buffer.from(a.url), 'image/png'),
          mime: 'image/png',
          width: 1,
          height: 1,
        }),
      },
      indexing: { pendingPerCommunity: 5, imagesPerUserPerMinute: 3 },
    });
    const post = (authorId: string, names: string[]) =>
      bot.indexImages({
        community: ref,
        channelId: 'art',
        messageId: `m-${++n}`,
        authorId,
        permalink: null,
        visibility: 'public',
        attachments: names.map((name) => ({
          url: `https://x.test/${n}/${name}`,
          name,
          contentType: 'image/png',
        })),
      });
    const ann = await post('ann', ['a.png', 'b.png', 'c.png', 'd.png']);
    expect(ann?.imageIds).toHaveLength(3);
    expect(ann?.refused).toEqual([
      '"d.png": only 3 of your images a minute are added to the index; it was not added',
    ]);
    const ben = await post('ben', ['e.png', 'f.png', 'g.png']);
    expect(ben?.imageIds).toHaveLength(2);
    expect(ben?.refused).toEqual(['"g.png": the image index is busy (5 images waiting); it was not added']);
    expect(await store.jobs.countActive({ communityId: community.id, lane: 'indexing' })).toBe(5);
    expect(await store.jobs.countActive({ communityId: community.id })).toBe(0);
    // Five waiting index jobs and a community cap of 1: the poster's own request is still accepted.
    expect(
      await bot.submit({ ...turn({ kind: 'imagine', prompt: 'a fox' }, 'ann'), community: ref }),
    ).toMatchObject({ status: 'accepted' });
  });

  describe('deletion is complete', () => {
    const ref = { platform: 'playground' as const, externalId: 'deletions' };
    /** An ingest that keeps each URL as the bytes; `gate` (when set) holds the download until it resolves. */
    let gate: Promise<void> | null = null;
    const bot = () =>
      createBotCore({
        store,
        queue,
        logger: createLogger('silent'),
        images: {
          ingest: async (a) => {
            await gate;
            return {
              hash: await store.blobs.put(Buffer.from(a.url), 'image/png'),
              mime: 'image/png',
              width: 1,
              height: 1,
            };
          },
        },
      });
    const post = (core: ReturnType<typeof bot>, authorId: string, messageId: string, channelId = 'art') =>
      core.indexImages({
        community: ref,
        channelId,
        messageId,
        authorId,
        permalink: null,
        visibility: 'public',
        attachments: [
          {
            id: `file-${messageId}`,
            url: `https://x.test/${messageId}`,
            name: `${messageId}.png`,
            contentType: 'image/png',
          },
        ],
      });
    const liveRows = async (messageId: string) => {
      const community = await store.communities.ensure(ref);
      return (
        await store.sql.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM images WHERE community_id = $1 AND message_id = $2 AND deleted_at IS NULL',
          [community.id, messageId],
        )
      )[0]!.n;
    };
    const indexJobs = async (messageId: string) =>
      (
        await store.sql.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM jobs j JOIN images i ON i.id::text = j.payload ->> 'imageId'
           WHERE j.kind = 'index' AND i.message_id = $1`,
          [messageId],
        )
      )[0]!.n;

    beforeAll(async () => {
      const community = await store.communities.ensure(ref);
      await store.communities.updateConfig(community.id, { indexedChannels: ['art', 'other'] });
    });

    it('a delete that arrives while the image is still downloading leaves no live row and no index job', async () => {
      const core = bot();
      let finish!: () => void;
      gate = new Promise((resolve) => {
        finish = resolve;
      });
      const indexing = post(core, 'ann', 'slow-1');
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(await core.removeMessage(ref, 'art', 'slow-1')).toBe(0);
      finish();
      gate = null;
      expect((await indexing)?.imageIds).toEqual([]);
      expect(await liveRows('slow-1')).toBe(0);
      expect(await indexJobs('slow-1')).toBe(0);
    });

    it('turning indexing off offers to purge the channel’s images, and purges them when asked', async () => {
      const core = bot();
      await post(core, 'ann', 'p-1', 'other');
      await post(core, 'ann', 'p-2', 'other');
      const admin = (purge: boolean) => ({
        ...turn(
          {
            kind: 'config',
            change: { setting: 'indexing', channelId: 'other', enabled: false, ...(purge ? { purge } : {}) },
          },
          'boss',
          true,
        ),
        community: ref,
      });
      const offer = await core.submit(admin(false));
      expect(offer).toMatchObject({
        status: 'answered',
        text: expect.stringContaining('turn indexing off again with purge to remove them'),
      });
      expect(await liveRows('p-1')).toBe(1);
      const purged = await core.submit(admin(true));
      expect(purged).toMatchObject({
        status: 'answered',
        text: expect.stringContaining('Removed 2 images indexed from #other.'),
      });
      expect((await liveRows('p-1')) + (await liveRows('p-2'))).toBe(0);
      expect(parseGillText('indexing off other purge', 'here')).toEqual({
        kind: 'config',
        change: { setting: 'indexing', enabled: false, channelId: 'other', purge: true },
      });
    });

    it('the retention sweep runs periodically and hard-deletes what was deleted before the period', async () => {
      const core = bot();
      const indexed = await post(core, 'eve', 'r-1');
      await core.removeMessage(ref, 'art', 'r-1');
      const logger = createLogger('silent');
      const keeping = startRetentionSweep({ store, logger, retentionDays: 30, intervalMs: 20 });
      await new Promise((resolve) => setTimeout(resolve, 200));
      keeping.stop();
      // Within the 30 days the deleted row stays (soft-deleted).
      expect((await store.images.get(indexed!.imageIds[0]!))?.live).toBe(false);
      const rows = () =>
        store.sql.query('SELECT 1 FROM images WHERE message_id = $1', ['r-1']).then((r) => r.length);
      expect(await rows()).toBe(1);
      const sweeping = startRetentionSweep({ store, logger, retentionDays: 0, intervalMs: 20 });
      try {
        await expect.poll(rows, { timeout: 5000 }).toBe(0);
      } finally {
        sweeping.stop();
      }
    });

    it('forget also opts the person out of future indexing until index-me on', async () => {
      const core = bot();
      await post(core, 'cat', 'f-1');
      const forgot = await core.submit({ ...turn({ kind: 'forget' }, 'cat'), community: ref });
      expect(forgot).toMatchObject({
        status: 'answered',
        text: expect.stringMatching(
          /^Removed 1 of your image from .* not indexed either, until you opt back in with `\/gill index-me on`/,
        ),
      });
      expect(await liveRows('f-1')).toBe(0);
      expect((await post(core, 'cat', 'f-2'))?.imageIds).toEqual([]);
      expect(await liveRows('f-2')).toBe(0);
      // Someone else is still indexed.
      expect((await post(core, 'dan', 'f-3'))?.imageIds).toHaveLength(1);
      expect(parseGillText('index-me on', 'here')).toEqual({ kind: 'index-me', enabled: true });
      const back = await core.submit({ ...turn({ kind: 'index-me', enabled: true }, 'cat'), community: ref });
      expect(back).toMatchObject({ status: 'answered', text: expect.stringContaining('indexed again') });
      expect((await post(core, 'cat', 'f-4'))?.imageIds).toHaveLength(1);
    });
  });

  it('lets only admins change the configuration, and refuses what is turned off', async () => {
    const bot = core();
    expect(
      await bot.submit(turn({ kind: 'config', change: { setting: 'generation', enabled: false } })),
    ).toMatchObject({
      status: 'refused',
      reason: 'not_admin',
    });
    const changed = await bot.submit(
      turn({ kind: 'config', change: { setting: 'generation', enabled: false } }, 'boss', true),
    );
    expect(changed).toMatchObject({ status: 'answered', text: expect.stringContaining('Generation: off') });
    expect(await bot.submit(turn({ kind: 'imagine', prompt: 'a dog' }, 'u9'))).toEqual({
      status: 'refused',
      reason: 'disabled',
      message: 'Image generation is turned off in this community.',
    });
    await bot.submit(
      turn({ kind: 'config', change: { setting: 'generation', enabled: true } }, 'boss', true),
    );
  });

  it('refuses bad input and unknown buttons with the reason', async () => {
    const bot = core();
    const long = await bot.submit(turn({ kind: 'imagine', prompt: 'p'.repeat(4001) }, 'u7'));
    expect(long).toMatchObject({
      status: 'refused',
      reason: 'bad_input',
      message: expect.stringContaining('over 4000 characters'),
    });
    const button = await bot.submit(
      turn({ kind: 'button', action: 'regenerate', jobId: '00000000-0000-0000-0000-000000000000' }, 'u7'),
    );
    expect(button).toMatchObject({ status: 'refused', reason: 'not_found' });
  });
});
