import { DiscordAPIError, HTTPError, RateLimitError } from 'discord.js';
import { describe, expect, it } from 'vitest';
import { byteForms, captureLogger as capture } from './support/log-capture.ts';

/**
 * Logs never hold a token or a file's bytes (README, "Security"): discord.js REST errors carry the
 * request's URL (an interaction's token in it) and body (the uploaded images), and they are logged whole.
 * trust-discord.test.ts checks the same through the running bot.
 */

// Shaped like real credentials, so the pattern redaction is what removes them.
const BOT_TOKEN = 'MTA5ODc2NTQzMjEwOTg3NjU0Mw.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB';
const INTERACTION_TOKEN = 'aW50ZXJhY3Rpb246MTA5ODc2NTQzMjEwOTg3NjU0MzpYWVpXVlVUU1JRUE9OTUxLSklIR0ZFRENCQQ';
const SLACK_TOKEN = 'xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx';

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
