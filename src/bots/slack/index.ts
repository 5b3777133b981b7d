import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { App, HTTPReceiver, type Receiver, SocketModeReceiver, type webApi } from '@slack/bolt';
import type { Config } from '../../config.ts';
import type { Logger } from '../../log.ts';
import type { GillMetrics } from '../../metrics/metrics.ts';
import type { JobQueue } from '../../queue/queue.ts';
import type { Store } from '../../store/types.ts';
import { createImageIngest } from '../core/images.ts';
import { indexingLimits } from '../core/limits.ts';
import { startBot } from '../core/start.ts';
import { SlackAdmins } from './admins.ts';
import { boltLogger } from './bolt-logger.ts';
import { slackFileGuard } from './files.ts';
import { SlackInbound } from './inbound.ts';
import { SlackAdapter } from './outbound.ts';
import { refuseFutureDatedRequests } from './signature.ts';
import { ThreadCache } from './threads.ts';

/**
 * The Slack adapter: a Bolt app receiving events, slash commands and button presses (HTTP at
 * /slack/events with Bolt's v0 signature check, or Socket Mode when SLACK_APP_TOKEN is set), the core for
 * turning them into jobs, and the delivery loop posting replies. The app is created from
 * slack-app-manifest.json beside this file (for Socket Mode, set socket_mode_enabled to true there).
 */

export interface SlackOptions {
  config: Config;
  store: Store;
  queue: JobQueue;
  logger: Logger;
  /** Deliveries and rate-limit refusals are counted here when given. */
  metrics?: GillMetrics;
  /**
   * Where the HTTP receiver listens: all interfaces by default (Slack must reach it, usually through a
   * reverse proxy), never "localhost", which may resolve to ::1 only. Port 0 picks a free one.
   */
  listen?: { host?: string; port?: number };
  /** Delivery sweep interval (tests shorten it). */
  sweepIntervalMs?: number;
}

export interface SlackHandle {
  /** The events URL in HTTP mode (with the bound port); undefined in Socket Mode. */
  eventsUrl?: string;
  stop(): Promise<void>;
}

export const SLACK_EVENTS_PATH = '/slack/events';

/** How long one Web API request may take before it is abandoned (and retried). */
export const SLACK_API_TIMEOUT_MS = 20_000;

/**
 * The Web API client's settings: a timeout per request and a few quick retries (WebClient's default is
 * no timeout and ten retries over about half an hour), so one slow call cannot hold a delivery for long;
 * the delivery loop tries again later.
 */
export function slackClientOptions(
  slackApiUrl: string | undefined,
  timeoutMs = SLACK_API_TIMEOUT_MS,
): webApi.WebClientOptions {
  return {
    ...(slackApiUrl ? { slackApiUrl } : {}),
    timeout: timeoutMs,
    retryConfig: { retries: 2, factor: 2, minTimeout: 500, maxTimeout: 5000 },
  };
}

export async function startSlack(options: SlackOptions): Promise<SlackHandle> {
  const { config, store, queue } = options;
  const logger = options.logger.child({ platform: 'slack' });
  const token = config.SLACK_BOT_TOKEN;
  if (!token) throw new Error('SLACK_BOT_TOKEN is not set');
  const clientOptions = slackClientOptions(config.SLACK_API_URL);
  const boltLog = boltLogger(logger);

  let receiver: Receiver;
  if (config.SLACK_APP_TOKEN) {
    receiver = new SocketModeReceiver({
      appToken: config.SLACK_APP_TOKEN,
      logger: boltLog,
      installerOptions: { clientOptions },
    });
  } else {
    if (!config.SLACK_SIGNING_SECRET) throw new Error('SLACK_SIGNING_SECRET is required for HTTP mode');
    const http = new HTTPReceiver({
      signingSecret: config.SLACK_SIGNING_SECRET,
      endpoints: SLACK_EVENTS_PATH,
      logger: boltLog,
    });
    refuseFutureDatedRequests(http);
    receiver = http;
  }
  const app = new App({ token, receiver, logger: boltLog, clientOptions });
  app.error(async (error) => {
    logger.error({ err: error }, 'unhandled error in a Slack listener');
  });

  const auth = await app.client.auth.test();
  const botUserId = String(auth.user_id);
  const teamId = String(auth.team_id);
  logger.info({ team: auth.team, teamId, botUserId }, 'Slack token verified');

  const threads = new ThreadCache(app.client);
  threads.setBotUserId(botUserId);
  const bot = startBot({
    store,
    queue,
    logger,
    adapter: new SlackAdapter({
      client: app.client,
      store,
      logger,
      onPosted: (channel, message) => threads.record(channel, message),
    }),
    core: {
      images: createImageIngest({ store, guard: slackFileGuard(token, config.SLACK_API_URL) }),
      channelMention: (id) => `<#${id}>`,
      userMention: (id) => `<@${id}>`,
      indexing: indexingLimits(config),
    },
    sweepIntervalMs: options.sweepIntervalMs,
    metrics: options.metrics,
    retentionDays: config.GILL_RETENTION_DAYS,
  });
  new SlackInbound({
    app,
    bot,
    threads,
    admins: new SlackAdmins(app.client, config.SLACK_ADMIN_USERS),
    logger,
    botUserId,
    teamId,
  }).register();

  let eventsUrl: string | undefined;
  if (config.SLACK_APP_TOKEN) {
    await app.start();
    logger.info('Slack connected in Socket Mode');
  } else {
    const host = options.listen?.host ?? '0.0.0.0';
    const server = (await app.start({ port: options.listen?.port ?? config.SLACK_PORT, host })) as Server;
    const { port } = server.address() as AddressInfo;
    eventsUrl = `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${port}${SLACK_EVENTS_PATH}`;
    logger.info({ host, port, path: SLACK_EVENTS_PATH }, 'Slack events endpoint listening');
  }

  return {
    eventsUrl,
    async stop() {
      await app.stop();
      await bot.stop();
    },
  };
}
