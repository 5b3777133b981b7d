import { setTimeout as sleep } from 'node:timers/promises';
import { type DiscordBot, startDiscord } from '../../src/bots/discord/index.ts';
import {
  PLAYGROUND_COMMUNITY,
  type PlaygroundHandle,
  startPlayground,
} from '../../src/bots/playground/index.ts';
import { REQUEST_HEADER } from '../../src/bots/playground/server.ts';
import { type SlackHandle, startSlack } from '../../src/bots/slack/index.ts';
import { loadConfig } from '../../src/config.ts';
import type { CommunityRef } from '../../src/jobs.ts';
import type { Logger } from '../../src/log.ts';
import type { JobQueue } from '../../src/queue/queue.ts';
import type { JobRecord, Store } from '../../src/store/types.ts';
import { FakeDiscord, type FakeUser } from '../../test/fakes/discord.ts';
import {
  FakeSlack,
  mentionEnvelope,
  messageEnvelope,
  type SlackRequestTarget,
  sendEvent,
} from '../../test/fakes/slack.ts';

/**
 * The three ways a person reaches the bot, each through its real adapter: the real discord.js client
 * against the loopback Discord, a real Bolt app against the loopback Slack (signed Events API requests),
 * and the playground's HTTP API. A driver posts what a person would post and returns the job the bot
 * started for it, once that job's reply is delivered in the thread.
 */

export type PlatformName = 'discord' | 'slack' | 'playground';
export const PLATFORMS: readonly PlatformName[] = ['discord', 'slack', 'playground'];

export interface Shared {
  store: Store;
  queue: JobQueue;
  logger: Logger;
  /** GILL_DATA_DIR for the adapters' configs (nothing is written there by them). */
  dataDir: string;
}

export interface PlatformDriver {
  readonly name: PlatformName;
  readonly community: CommunityRef;
  /** A mention in the channel: the bot answers in a new thread. Returns the thread and the answered job. */
  open(text: string): Promise<{ thread: string; job: JobRecord }>;
  /** A message in the thread, mentioning the bot or not; returns the job that answered it. */
  say(thread: string, text: string, mention: boolean): Promise<JobRecord>;
  stop(): Promise<void>;
}

/** How long one turn may take: queueing behind the other platforms' turns, the LM and 25 diffusion steps. */
const TURN_TIMEOUT_MS = 300_000;
/**
 * With no job for the event after this long, the event is sent again, as the platforms do (a gateway
 * replay after a resume, an Events API retry): on a loaded machine a missed heartbeat makes discord.js
 * reconnect, and the loopback gateway does not replay what it sent meanwhile.
 */
const RESEND_AFTER_MS = 20_000;

/**
 * The job the core started for an event (its idempotency key), once its reply has been delivered. The
 * idempotency key makes a resent event land on the same job.
 */
async function answered(store: Store, idempotencyKey: string, resend?: () => unknown): Promise<JobRecord> {
  const deadline = Date.now() + TURN_TIMEOUT_MS;
  let resendAt = Date.now() + RESEND_AFTER_MS;
  while (Date.now() < deadline) {
    const [row] = await store.sql.query<{ id: string }>('SELECT id FROM jobs WHERE idempotency_key = $1', [
      idempotencyKey,
    ]);
    const job = row ? await store.jobs.get(row.id) : null;
    if (!job && resend && Date.now() > resendAt) {
      await resend();
      resendAt = Date.now() + RESEND_AFTER_MS;
    }
    if (job?.deliveredAt) return job;
    if (job && (job.status === 'cancelled' || job.status === 'failed') && job.deliveredAt) return job;
    await sleep(50);
  }
  throw new Error(`no delivered reply for ${idempotencyKey} within ${TURN_TIMEOUT_MS / 1000} s`);
}

export async function startDiscordDriver(shared: Shared): Promise<PlatformDriver> {
  const fake = await new FakeDiscord().start();
  const person: FakeUser = fake.addUser('alice');
  const config = loadConfig({
    DISCORD_TOKEN: 'fake-token',
    DISCORD_APPLICATION_ID: fake.applicationId,
    DISCORD_API_URL: fake.apiUrl,
    DISCORD_CDN_URL: fake.cdnUrl,
    GILL_DATA_DIR: shared.dataDir,
  });
  const bot: DiscordBot = await startDiscord({ ...shared, config, sweepIntervalMs: 500 });
  return {
    name: 'discord',
    community: { platform: 'discord', externalId: fake.guildId },
    async open(text) {
      const message = fake.post({ author: person, content: text, mentionBot: true });
      const job = await answered(shared.store, `discord:message:${message.id}`, () => fake.redeliver(message));
      return { thread: String(message.id), job };
    },
    async say(thread, text, mention) {
      const message = fake.post({ channelId: thread, author: person, content: text, mentionBot: mention });
      return answered(shared.store, `discord:message:${message.id}`, () => fake.redeliver(message));
    },
    async stop() {
      await bot.stop();
      await fake.close();
    },
  };
}

const SLACK_SECRET = 'thread-replay-signing-secret';
const SLACK_CHANNEL = 'CREPLAY';
const SLACK_PERSON = 'UALICE';

export async function startSlackDriver(shared: Shared): Promise<PlatformDriver> {
  const fake = await FakeSlack.start();
  fake.addUser(SLACK_PERSON, { name: 'alice' });
  const config = loadConfig({
    SLACK_BOT_TOKEN: fake.botToken,
    SLACK_SIGNING_SECRET: SLACK_SECRET,
    SLACK_API_URL: fake.apiUrl,
    GILL_DATA_DIR: shared.dataDir,
  });
  const slack: SlackHandle = await startSlack({
    ...shared,
    config,
    listen: { host: '127.0.0.1', port: 0 },
    sweepIntervalMs: 500,
  });
  const target: SlackRequestTarget = { url: slack.eventsUrl!, signingSecret: SLACK_SECRET };
  let events = 0;

  /** Posts the message and sends its events as Slack does: app_mention and message for a mention. */
  async function post(text: string, mention: boolean, threadTs?: string) {
    const message = fake.userMessage({
      channel: SLACK_CHANNEL,
      user: SLACK_PERSON,
      text: mention ? `<@${fake.botUserId}> ${text}` : text,
      threadTs,
    });
    const eventId = `EvReplay${++events}`;
    let retryNum = 0;
    const send = async () => {
      const retry = retryNum++ ? { retryNum: retryNum - 1 } : {};
      if (mention) {
        await sendEvent(target, mentionEnvelope(fake, message, eventId), retry);
        await sendEvent(target, messageEnvelope(fake, message, `${eventId}m`), retry);
      } else {
        await sendEvent(target, messageEnvelope(fake, message, eventId), retry);
      }
    };
    await send();
    return { message, job: await answered(shared.store, `slack:event:${eventId}`, send) };
  }

  return {
    name: 'slack',
    community: { platform: 'slack', externalId: fake.teamId },
    async open(text) {
      const { message, job } = await post(text, true);
      return { thread: message.ts, job };
    },
    async say(thread, text, mention) {
      return (await post(text, mention, thread)).job;
    },
    async stop() {
      await slack.stop();
      await fake.close();
    },
  };
}

export async function startPlaygroundDriver(shared: Shared): Promise<PlatformDriver> {
  const playground: PlaygroundHandle = await startPlayground({
    ...shared,
    config: { GILL_HOST: '127.0.0.1', GILL_PORT: 0 },
    listen: { port: 0 },
    sweepIntervalMs: 500,
  });
  let posts = 0;

  async function post(text: string, threadId?: string): Promise<{ messageId: string; threadId: string }> {
    const form = new FormData();
    form.set('text', text);
    form.set('clientKey', `replay-${process.pid}-${++posts}-${Date.now()}`);
    form.set('userId', 'alice');
    form.set('userName', 'alice');
    if (threadId) form.set('threadId', threadId);
    const response = await fetch(new URL('/api/messages', playground.url), {
      method: 'POST',
      body: form,
      headers: { [REQUEST_HEADER]: '1' },
    });
    const body = (await response.json()) as {
      message?: { id: string };
      threadId?: string;
      error?: string;
      answering?: boolean;
      notice?: string;
    };
    if (!response.ok || !body.message || !body.threadId)
      throw new Error(`the playground refused "${text}": ${body.error ?? response.status}`);
    if (!body.answering) throw new Error(`the playground did not answer "${text}": ${body.notice ?? ''}`);
    return { messageId: body.message.id, threadId: body.threadId };
  }

  return {
    name: 'playground',
    community: PLAYGROUND_COMMUNITY,
    async open(text) {
      const { messageId, threadId } = await post(`@gill ${text}`);
      return { thread: threadId, job: await answered(shared.store, `playground:message:${messageId}`) };
    },
    async say(thread, text, mention) {
      const { messageId } = await post(mention ? `@gill ${text}` : text, thread);
      return answered(shared.store, `playground:message:${messageId}`);
    },
    async stop() {
      await playground.stop();
    },
  };
}

export function startDriver(name: PlatformName, shared: Shared): Promise<PlatformDriver> {
  switch (name) {
    case 'discord':
      return startDiscordDriver(shared);
    case 'slack':
      return startSlackDriver(shared);
    case 'playground':
      return startPlaygroundDriver(shared);
  }
}
