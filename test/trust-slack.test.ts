import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { webApi } from '@slack/bolt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type SlackHandle, slackClientOptions, startSlack } from '../src/bots/slack/index.ts';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import { connect } from '../src/store/connect.ts';
import type { Store } from '../src/store/types.ts';
import { FakeSlack, mentionEnvelope, type SlackRequestTarget, sendEvent } from './fakes/slack.ts';

/**
 * The Slack side's own limits, with the real Bolt app and WebClient against the loopback fake: requests
 * dated in the future are refused like stale ones, and a Web API call that Slack answers too slowly is
 * abandoned after a bounded number of tries.
 */

const SECRET = 'trust-slack-secret';
const logger = createLogger('silent');

let dataDir: string;
let fake: FakeSlack;
let store: Store;
let queue: MemoryJobQueue;
let slack: SlackHandle;
let target: SlackRequestTarget;

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), 'gill-trust-slack-'));
  fake = await FakeSlack.start();
  fake.addUser('UPLAIN');
  const config = loadConfig({
    SLACK_BOT_TOKEN: fake.botToken,
    SLACK_SIGNING_SECRET: SECRET,
    SLACK_API_URL: fake.apiUrl,
    GILL_DATA_DIR: dataDir,
  });
  store = await connect(config);
  queue = new MemoryJobQueue({ logger });
  slack = await startSlack({ config, store, queue, logger, listen: { host: '127.0.0.1', port: 0 } });
  target = { url: slack.eventsUrl!, signingSecret: SECRET };
});

afterAll(async () => {
  await slack?.stop();
  await queue?.close();
  await store?.close();
  await fake?.close();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('Slack request signatures', () => {
  it('refuses a correctly signed request dated more than 5 minutes in the future, accepts one dated now', async () => {
    const message = fake.userMessage({ channel: 'CFUTURE', user: 'UPLAIN', text: `<@${fake.botUserId}> hi` });
    const now = Math.floor(Date.now() / 1000);
    const future = await sendEvent(target, mentionEnvelope(fake, message, 'EvFuture1'), {
      timestamp: now + 6 * 60,
    });
    expect(future.status).toBe(401);
    const farFuture = await sendEvent(target, mentionEnvelope(fake, message, 'EvFuture2'), {
      timestamp: now + 24 * 3600,
    });
    expect(farFuture.status).toBe(401);
    const current = await sendEvent(target, mentionEnvelope(fake, message, 'EvFuture3'));
    expect(current.status).toBe(200);
    // Only the request dated now became a job (its progress message is the bot's only message).
    await fake.waitFor(() => fake.botMessages('CFUTURE').length > 0);
    expect(fake.botMessages('CFUTURE')).toHaveLength(1);
  });
});

describe('Slack Web API client', () => {
  it('gives up on a call Slack answers too slowly after a timeout per try and a bounded number of tries', async () => {
    const client = new webApi.WebClient(fake.botToken, slackClientOptions(fake.apiUrl, 300));
    const tries = () =>
      fake.callsOf('chat.postMessage').filter((c) => c.params.channel === 'CSLOWAPI').length;
    fake.slowNext('chat.postMessage', 5_000, 10);
    const started = Date.now();
    const error = await client.chat.postMessage({ channel: 'CSLOWAPI', text: 'hello' }).then(
      () => null,
      (e: unknown) => e,
    );
    const took = Date.now() - started;
    expect(error).toBeInstanceOf(Error);
    // The first try and the configured retries, each abandoned, then no more.
    expect(tries()).toBe(3);
    // Each try was abandoned at its timeout, long before the fake's 5 s answer.
    expect(took).toBeLessThan(5_000);
    expect(fake.botMessages('CSLOWAPI')).toHaveLength(0);
  });

  it('uses the same settings in the running app: a timeout and three tries at most', () => {
    const options = slackClientOptions(undefined);
    expect(options.timeout).toBeGreaterThan(0);
    expect(options.retryConfig?.retries).toBe(2);
  });
});
