import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { type Config, ConfigError } from '../../config.ts';
import type { CommunityRef } from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import type { GillMetrics } from '../../metrics/metrics.ts';
import type { JobQueue } from '../../queue/queue.ts';
import type { Store } from '../../store/types.ts';
import type { BotCore } from '../core/bot-core.ts';
import { createFetchGuard, DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS } from '../core/fetch-guard.ts';
import { createImageIngest } from '../core/images.ts';
import { indexingLimits } from '../core/limits.ts';
import { startBot } from '../core/start.ts';
import { EventHub } from './events.ts';
import { PlaygroundInbound } from './inbound.ts';
import { PlaygroundMessages } from './messages.ts';
import { PlaygroundAdapter } from './outbound.ts';
import { PLAYGROUND_COMMUNITY } from './seed-gallery.ts';
import { createPlaygroundServer, isLoopback } from './server.ts';
import { UploadShelf } from './uploads.ts';

/**
 * The local playground: a chat channel with threads in the browser, served on loopback by `gill start`,
 * on the same core, queue, engine and exactly-once delivery as Discord and Slack. Nothing to configure on
 * loopback, and the page loads nothing from outside this server. Served beyond loopback it needs
 * GILL_PLAYGROUND_TOKEN, and every request must carry it (server.ts).
 */

export { PLAYGROUND_COMMUNITY, seedGallery } from './seed-gallery.ts';

/** The playground's one channel. */
export const PLAYGROUND_CHANNEL = 'playground';

export interface PlaygroundOptions {
  config: Pick<Config, 'GILL_HOST' | 'GILL_PORT' | 'GILL_PLAYGROUND_TOKEN'> &
    Partial<
      Pick<Config, 'GILL_INDEX_MAX_PENDING' | 'GILL_INDEX_PER_USER_PER_MINUTE' | 'GILL_RETENTION_DAYS'>
    >;
  store: Store;
  queue: JobQueue;
  /**
   * A core to share with other adapters. It must read images through an ingest that can fetch from this
   * server; left out, the playground makes its own (the usual case).
   */
  core?: BotCore;
  logger: Logger;
  /** Overrides GILL_HOST / GILL_PORT (port 0 picks a free one). */
  listen?: { host?: string; port?: number };
  community?: CommunityRef;
  /** Delivery sweep interval (tests shorten it). */
  sweepIntervalMs?: number;
  /** Deliveries and rate-limit refusals are counted here when given. */
  metrics?: GillMetrics;
}

export interface PlaygroundHandle {
  url: string;
  stop(): Promise<void>;
}

/** The address to put in URLs for a bound address: wildcards are reached through loopback. */
function reachable(address: string): string {
  if (address === '0.0.0.0') return '127.0.0.1';
  if (address === '::') return '[::1]';
  return address.includes(':') ? `[${address}]` : address;
}

export async function startPlayground(options: PlaygroundOptions): Promise<PlaygroundHandle> {
  const { store, queue } = options;
  const host = options.listen?.host ?? options.config.GILL_HOST;
  const token = options.config.GILL_PLAYGROUND_TOKEN;
  // Whoever reaches the playground may change its settings: beyond this machine, only with the token.
  if (!token && !isLoopback(host)) {
    throw new ConfigError([
      `GILL_PLAYGROUND_TOKEN: required when the playground listens beyond this machine (GILL_HOST=${host}); set it to a long random string, then open the playground once at /?token=<it>`,
    ]);
  }
  const logger = options.logger.child({ platform: 'playground' });
  const communityRef = options.community ?? PLAYGROUND_COMMUNITY;
  const community = await store.communities.ensure(communityRef);
  const messages = new PlaygroundMessages(store.sql);
  const hub = new EventHub();
  const uploads = new UploadShelf();
  const adapter = new PlaygroundAdapter({ store, messages, hub, logger, communityId: community.id });
  const limits = { maxBytes: DEFAULT_MAX_IMAGE_BYTES, maxPixels: DEFAULT_MAX_IMAGE_PIXELS };

  let ready!: (inbound: PlaygroundInbound) => void;
  const inbound = new Promise<PlaygroundInbound>((resolve) => {
    ready = resolve;
  });
  let allowedHosts: Set<string> | null = new Set();
  const server = createPlaygroundServer({
    store,
    messages,
    inbound,
    uploads,
    hub,
    logger,
    communityId: community.id,
    channelId: PLAYGROUND_CHANNEL,
    limits,
    hostAllowed: (name) =>
      allowedHosts === null || (name !== undefined && allowedHosts.has(name.toLowerCase())),
    ...(token ? { token } : {}),
  });

  server.listen(options.listen?.port ?? options.config.GILL_PORT, host);
  await Promise.race([
    once(server, 'listening'),
    once(server, 'error').then(([error]) => {
      const code = (error as NodeJS.ErrnoException).code;
      throw new Error(
        code === 'EADDRINUSE'
          ? `the playground cannot listen on ${host}:${options.listen?.port ?? options.config.GILL_PORT}: the port is in use (set GILL_PORT to another one)`
          : `the playground cannot listen on ${host}: ${(error as Error).message}`,
        { cause: error },
      );
    }),
  ]);
  const bound = server.address() as AddressInfo;
  const origin = `http://${reachable(bound.address)}:${bound.port}`;
  // A wildcard bind means the operator wants other machines in: no Host check then.
  allowedHosts =
    bound.address === '0.0.0.0' || bound.address === '::'
      ? null
      : new Set(
          [reachable(bound.address), 'localhost', host.includes(':') ? `[${host}]` : host].map((h) =>
            `${h}:${bound.port}`.toLowerCase(),
          ),
        );

  // Uploads are fetched back from this server by the bots' own fetch guard, under the bots' limits.
  const images = createImageIngest({
    store,
    guard: createFetchGuard({ allowed: [origin], maxBytes: limits.maxBytes, maxPixels: limits.maxPixels }),
  });
  uploads.open(origin, images);
  const bot = startBot({
    store,
    queue,
    logger,
    adapter,
    core: options.core ?? {
      images,
      channelMention: (id) => `#${id}`,
      // The page's default name is "you", which would read wrongly in someone else's refusal.
      userMention: (_id, name) => (name && name !== 'you' ? name : 'the person who asked'),
      indexing: indexingLimits(options.config),
    },
    sweepIntervalMs: options.sweepIntervalMs,
    metrics: options.metrics,
    retentionDays: options.config.GILL_RETENTION_DAYS,
  });

  ready(
    new PlaygroundInbound({
      bot,
      messages,
      adapter,
      uploads,
      logger,
      community: communityRef,
      communityId: community.id,
      channelId: PLAYGROUND_CHANNEL,
    }),
  );
  const url = `${origin}/`;
  logger.info({ url }, 'playground listening');

  return {
    url,
    async stop() {
      hub.close();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
      await bot.stop();
    },
  };
}
