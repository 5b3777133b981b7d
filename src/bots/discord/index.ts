import { once } from 'node:events';
import {
  Client,
  Events,
  type Message,
  type MessageReaction,
  type PartialMessage,
  type PartialMessageReaction,
  Partials,
  type PartialUser,
  type User,
} from 'discord.js';
import type { Config } from '../../config.ts';
import { UserInputError } from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import type { GillMetrics } from '../../metrics/metrics.ts';
import type { JobQueue } from '../../queue/queue.ts';
import type { Store } from '../../store/types.ts';
import { createFetchGuard } from '../core/fetch-guard.ts';
import { createImageIngest } from '../core/images.ts';
import { indexingLimits } from '../core/limits.ts';
import { startBot } from '../core/start.ts';
import { DiscordInbound } from './inbound.ts';
import { gatewayIntents } from './intents.ts';
import { DiscordAdapter } from './outbound.ts';
import { reactionRequest } from './reactions.ts';
import { attachmentOrigins, restOptions } from './rest.ts';

/**
 * The Discord bot: a discord.js client whose gateway events become Turns (inbound.ts), the shared core
 * and delivery (../core/start.ts), and replies sent through REST (outbound.ts).
 */

export interface DiscordBot {
  client: Client;
  stop(): Promise<void>;
}

export interface StartDiscordOptions {
  config: Config;
  store: Store;
  queue: JobQueue;
  logger: Logger;
  /** Deliveries and rate-limit refusals are counted here when given. */
  metrics?: GillMetrics;
  /** Milliseconds between sweeps for undelivered replies (tests shorten it). */
  sweepIntervalMs?: number;
}

export async function startDiscord(options: StartDiscordOptions): Promise<DiscordBot> {
  const { config, store, queue } = options;
  if (!config.DISCORD_TOKEN || !config.DISCORD_APPLICATION_ID) {
    throw new UserInputError('DISCORD_TOKEN and DISCORD_APPLICATION_ID must be set to start the Discord bot');
  }
  const logger = options.logger.child({ platform: 'discord' });
  const client = new Client({
    intents: gatewayIntents(config),
    // Deleted messages arrive as partials when they were not cached; their ids are all the index needs.
    // Reactions on replies sent before a restart arrive as partials too; the message is fetched then.
    partials: [Partials.Message, Partials.Channel, Partials.Reaction, Partials.User],
    rest: restOptions(config),
    allowedMentions: { parse: [] },
  });
  // Delivery needs only REST: set the token now so replies can go out before the gateway is ready.
  client.rest.setToken(config.DISCORD_TOKEN);

  const bot = startBot({
    store,
    queue,
    logger,
    adapter: new DiscordAdapter({
      rest: client.rest,
      store,
      logger,
      applicationId: config.DISCORD_APPLICATION_ID,
    }),
    core: {
      images: createImageIngest({ store, guard: createFetchGuard({ allowed: attachmentOrigins(config) }) }),
      channelMention: (id) => `<#${id}>`,
      userMention: (id) => `<@${id}>`,
      indexing: indexingLimits(config),
    },
    sweepIntervalMs: options.sweepIntervalMs,
    metrics: options.metrics,
    retentionDays: config.GILL_RETENTION_DAYS,
  });
  const inbound = new DiscordInbound({ client, bot, config, logger });

  const guarded =
    <A extends unknown[]>(what: string, handler: (...args: A) => Promise<void>) =>
    (...args: A) => {
      handler(...args).catch((error) => logger.error({ err: error }, `${what} failed`));
    };
  client.on(
    Events.MessageCreate,
    guarded('message', (message) => inbound.message(message)),
  );
  client.on(
    Events.InteractionCreate,
    guarded('interaction', (interaction) => inbound.interaction(interaction)),
  );
  client.on(
    Events.MessageDelete,
    guarded('message delete', (message: Message | PartialMessage) => inbound.deleted(message)),
  );
  client.on(
    Events.MessageUpdate,
    guarded('message edit', (_before, after: Message | PartialMessage) => inbound.edited(after)),
  );
  client.on(
    Events.ThreadDelete,
    guarded('thread delete', (thread) => inbound.channelDeleted(thread)),
  );
  client.on(
    Events.ChannelDelete,
    guarded('channel delete', (channel) => inbound.channelDeleted(channel)),
  );
  client.on(
    Events.MessageBulkDelete,
    guarded('bulk delete', async (messages) => {
      for (const message of messages.values()) await inbound.deleted(message);
    }),
  );
  const onReaction = (added: boolean) =>
    guarded(
      'reaction',
      async (reaction: MessageReaction | PartialMessageReaction, user: User | PartialUser) => {
        const request = await reactionRequest(reaction, user, client.user!.id, added);
        if (request) await bot.core.react(request);
      },
    );
  client.on(Events.MessageReactionAdd, onReaction(true));
  client.on(Events.MessageReactionRemove, onReaction(false));
  client.on(Events.Error, (error) => logger.error({ err: error }, 'discord client error'));
  client.rest.on('rateLimited', (info) =>
    logger.warn(
      { route: info.route, retryAfterMs: info.retryAfter, global: info.global },
      'rate limited by Discord; waiting',
    ),
  );

  const ready = once(client, Events.ClientReady);
  try {
    await client.login(config.DISCORD_TOKEN);
    await ready;
  } catch (error) {
    await bot.stop();
    await client.destroy();
    throw error;
  }
  logger.info(
    { user: client.user?.tag, messageContent: config.DISCORD_MESSAGE_CONTENT },
    'discord bot ready',
  );

  return {
    client,
    async stop() {
      await bot.stop();
      await client.destroy();
    },
  };
}
