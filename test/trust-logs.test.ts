import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { DiscordAPIError, HTTPError, RateLimitError } from 'discord.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type DiscordBot, startDiscord } from '../src/bots/discord/bot.ts';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import { runJobs } from '../src/queue/worker.ts';
import { connect } from '../src/store/connect.ts';
import type { Store } from '../src/store/types.ts';
import { FakeDiscord } from './fakes/discord.ts';
import { EchoEngine } from './support/echo-engine.ts';

/**
 * Logs never hold a token or a file's bytes (README, "Security"): discord.js REST errors carry the
 * request's URL (an interaction's token in it) and body (the uploaded images), and they are logged whole.
 */

// Shaped like real credentials, so the pattern redaction is what removes them.
const BOT_TOKEN = 'MTA5ODc2NTQzMjEwOTg3NjU0Mw.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB';
const INTERACTION_TOKEN = 'aW50ZXJhY3Rpb246MTA5ODc2NTQzMjEwOTg3NjU0MzpYWVpXVlVUU1JRUE9OTUxLSklIR0ZFRENCQQ';
const SLACK_TOKEN = 'xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx';

/** A logger writing JSON lines into `lines`. */
function capture(lines: string[]) {
  return createLogger(
    'debug',
    new Writable({
      write(chunk, _enc, done) {
        lines.push(String(chunk));
        done();
      },
    }),
  );
}

/** Every form a file's bytes take when logged: raw, base64, hex, and JSON's number list for a Buffer. */
function byteForms(bytes: Buffer): string[] {
  const head = bytes.subarray(0, 24);
  return [
    head.toString('latin1'),
    head.toString('base64').slice(0, 24),
    head.toString('hex'),
    Array.from(head).join(','),
  ];
}

describe('log serializer', () => {
  const pixels = Buffer.from('PIXELDATA-'.repeat(200));
  const files = [{ name: 'gill-generated-1.png', data: pixels, contentType: 'image/png' }];
  const webhookUrl = `https://discord.com/api/v10/webhooks/1098765432109876543/${INTERACTION_TOKEN}/messages/@original`;

  it('logs a DiscordAPIError without its URL token or uploaded bytes, keeping what went wrong', () => {
    const error = new DiscordAPIError(
      {
        code: 50035,
        message: 'Invalid Form Body',
        errors: { content: { _errors: [{ code: 'BASE_TYPE_MAX_LENGTH', message: 'Too long.' }] } },
      },
      50035,
      400,
      'PATCH',
      webhookUrl,
      { body: { content: 'hello' }, files },
    );
    const lines: string[] = [];
    capture(lines).error({ err: error, jobId: 'j1' }, 'delivery failed; will retry');
    const text = lines.join('');
    expect(text).not.toContain(INTERACTION_TOKEN);
    for (const form of byteForms(pixels)) expect(text).not.toContain(form);
    const logged = JSON.parse(text);
    expect(logged.err).toMatchObject({ type: 'DiscordAPIError', code: 50035, status: 400, method: 'PATCH' });
    expect(logged.err.message).toContain('Invalid Form Body');
    expect(logged.err.url).toBe(
      'https://discord.com/api/v10/webhooks/1098765432109876543/[redacted]/messages/@original',
    );
    expect(logged.err.requestBody).toBeUndefined();
    expect(text.length).toBeLessThan(4000);
  });

  it('drops bytes and tokens from errors and buffers under any field, nested, as causes, and in bindings', () => {
    const http = new HTTPError(
      502,
      'Bad Gateway',
      'POST',
      `https://discord.com/api/v10/interactions/1/${INTERACTION_TOKEN}/callback`,
      {
        body: { type: 4 },
        files,
      },
    );
    const lines: string[] = [];
    const logger = capture(lines).child({
      config: { DISCORD_TOKEN: BOT_TOKEN, SLACK_SIGNING_SECRET: 'abc123' },
    });
    logger.warn({ outcome: { error: http } }, 'callback failed');
    logger.error(new Error('upload failed', { cause: http }));
    logger.info({ blob: new Uint8Array(pixels), attachment: { data: pixels } }, 'stored');
    logger.info({ headers: { Authorization: `Bearer ${SLACK_TOKEN}` } }, `sent with Bot ${BOT_TOKEN}`);
    logger.info({ target: { data: { interactionToken: INTERACTION_TOKEN } } }, `from ${SLACK_TOKEN}`);
    logger.info({ url: 'postgres://gill:hunter2secret@db:5432/gill' }, 'connected');
    const limited = new RateLimitError({
      timeToReset: 1000,
      limit: 5,
      method: 'POST',
      hash: 'bucket',
      url: `https://discord.com/api/v10/webhooks/1098765432109876543/${INTERACTION_TOKEN}`,
      route: '/webhooks/:id/:token',
      majorParameter: `1098765432109876543/${INTERACTION_TOKEN}`,
      global: false,
      retryAfter: 1000,
      sublimitTimeout: 0,
      scope: 'user',
    });
    logger.warn({ err: limited }, 'rate limited');
    const text = lines.join('');
    for (const secret of [INTERACTION_TOKEN, BOT_TOKEN, SLACK_TOKEN, 'abc123', 'hunter2secret'])
      expect(text).not.toContain(secret);
    for (const form of byteForms(pixels)) expect(text).not.toContain(form);
    const [nested, caused, stored] = lines.slice(0, 3).map((line) => JSON.parse(line));
    expect(nested.outcome.error).toMatchObject({ type: 'HTTPError', status: 502, method: 'POST' });
    expect(caused.err.message).toContain('upload failed');
    expect(stored).toMatchObject({
      blob: `[${pixels.length} bytes]`,
      attachment: { data: `[${pixels.length} bytes]` },
    });
    expect(lines).toHaveLength(7);
    expect(JSON.parse(lines[6]!).err).toMatchObject({ majorParameter: '1098765432109876543/[redacted]' });
  });
});

describe('a Discord error on the interaction edit, end to end', () => {
  let dataDir: string;
  let fake: FakeDiscord;
  let store: Store;
  let queue: MemoryJobQueue;
  let engine: EchoEngine;
  let worker: { close(): Promise<void> };
  let bot: DiscordBot;
  const lines: string[] = [];

  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), 'gill-trust-logs-'));
    const logger = capture(lines);
    store = await connect({ DATABASE_URL: undefined, dataDir }, { logger });
    fake = await new FakeDiscord().start();
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

  it('answers 50035 to the @original edit with the image: the bot keeps running, the reply arrives, the log holds no token or bytes', async () => {
    const alice = fake.addUser('alice');
    // Only the final edit carries the image; progress edits go through.
    fake.failNext(
      'PATCH',
      /^\/webhooks\/\d+\/[^/]+\/messages\/@original$/,
      400,
      50035,
      'Invalid Form Body',
      2,
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
    const done = await fake.waitFor(
      () =>
        (fake.original(token)?.attachments as unknown[] | undefined)?.length
          ? fake.original(token)
          : undefined,
      20_000,
      'the image after the failed edits',
    );
    expect(String(done.content)).toContain('generated');
    const failed = fake
      .callsTo('PATCH', /\/messages\/@original$/)
      .filter((call) => call.status === 400 && call.files.length > 0);
    expect(failed).toHaveLength(2);
    const uploaded = failed[0]!.files[0]!.data;

    // Still running: a mention afterwards is answered.
    const mention = fake.post({ author: alice, content: 'still there?', mentionBot: true });
    await fake.waitFor(
      () =>
        fake.botMessages(mention.id as string).find((m) => String(m.content).includes('echo: still there?')),
      10_000,
      'an answer to the next mention',
    );

    const entries = lines.map((line) => JSON.parse(line) as Record<string, unknown>);
    const logged = entries.filter((e) => e.msg === 'delivery failed; will retry');
    expect(logged.length).toBeGreaterThanOrEqual(2);
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
