import { once } from 'node:events';
import { hostname } from 'node:os';
import {
  type ButtonInteraction,
  type ChatInputCommandInteraction,
  Client,
  Events,
  type Interaction,
  type Message,
  MessageFlags,
  type PartialMessage,
  Partials,
  ThreadAutoArchiveDuration,
} from 'discord.js';
import type { Config } from '../../config.ts';
import { UserInputError } from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import type { JobQueue } from '../../queue/queue.ts';
import type { Store } from '../../store/types.ts';
import { type BotCore, createBotCore, type SubmitOutcome } from '../core/bot-core.ts';
import { parseButtonId } from '../core/buttons.ts';
import { type AdapterDelivery, startAdapterDelivery } from '../core/delivery.ts';
import { createFetchGuard } from '../core/fetch-guard.ts';
import { createImageIngest } from '../core/images.ts';
import type { Command, InboundTurn, ThreadMessage } from '../core/turn.ts';
import { commandFromInteraction } from './commands.ts';
import {
  ALREADY_ACKNOWLEDGED,
  discordCode,
  permissionProblem,
  THREAD_ALREADY_CREATED,
  UNKNOWN_INTERACTION,
} from './errors.ts';
import { attachmentsOf, isAdmin, parentChannelOf, threadHistory, toThreadMessage } from './inbound.ts';
import { gatewayIntents } from './intents.ts';
import { DiscordAdapter, type DiscordTargetData } from './outbound.ts';
import { attachmentOrigins, restOptions } from './rest.ts';

/**
 * The Discord adapter: gateway events in, core Turns out, replies through the delivery loop.
 * An @mention in a channel is answered in a new thread started from it (the thread's id is the message's
 * id); later messages in that thread continue the conversation; slash commands and buttons are deferred
 * at once and answered by editing the deferred response.
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
  /** Milliseconds between sweeps for undelivered replies (tests shorten it). */
  sweepIntervalMs?: number;
}

const INTERACTION_WINDOW_MS = 15 * 60_000;
const THREAD_NAME_CHARS = 90;

function threadName(text: string, author: string): string {
  const line = text.split('\n')[0]!.trim();
  if (!line) return `Conversation with ${author}`.slice(0, THREAD_NAME_CHARS);
  return line.length > THREAD_NAME_CHARS ? `${line.slice(0, THREAD_NAME_CHARS - 1)}…` : line;
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
    partials: [Partials.Message, Partials.Channel],
    rest: restOptions(config),
    allowedMentions: { parse: [] },
  });
  // Delivery needs only REST: set the token now so replies can go out before the gateway is ready.
  client.rest.setToken(config.DISCORD_TOKEN);

  const guard = createFetchGuard({ allowed: attachmentOrigins(config) });
  const core: BotCore = createBotCore({
    store,
    queue,
    logger,
    images: createImageIngest({ store, guard }),
    channelMention: (id) => `<#${id}>`,
    userMention: (id) => `<@${id}>`,
  });
  const adapter = new DiscordAdapter({
    rest: client.rest,
    store,
    logger,
    applicationId: config.DISCORD_APPLICATION_ID,
  });
  const delivery: AdapterDelivery = startAdapterDelivery({
    store,
    queue,
    logger,
    adapter,
    owner: `${hostname()}:${process.pid}:discord`,
    sweepIntervalMs: options.sweepIntervalMs,
  });

  const botId = () => client.user!.id;

  /** Posts a short notice in a channel; failures (no permission to write there either) are logged. */
  async function notice(channelId: string, content: string, replyTo?: string): Promise<void> {
    const channel = await client.channels.fetch(channelId).catch(() => null);
    if (!channel?.isSendable()) return;
    await channel
      .send({ content, reply: replyTo ? { messageReference: replyTo, failIfNotExists: false } : undefined })
      .catch((error) =>
        logger.error(
          { err: error, channelId, problem: permissionProblem(error, 'Send Messages') },
          'could not post a notice',
        ),
      );
  }

  async function afterSubmit(outcome: SubmitOutcome, channelId: string, replyTo?: string): Promise<void> {
    if (outcome.status === 'accepted') {
      await delivery.progress(outcome.jobId, { stage: 'queued', position: outcome.position ?? 0 });
      delivery.watchPosition(outcome.jobId);
    } else if (outcome.status === 'refused') {
      await notice(channelId, `⚠️ ${outcome.message}`, replyTo);
    } else if (outcome.status === 'answered') {
      await notice(channelId, outcome.text, replyTo);
    }
  }

  /** Starts the thread for a mention; null when it can't (missing permission), after saying why. */
  async function openThread(message: Message<true>): Promise<string | null> {
    try {
      const thread = await message.startThread({
        name: threadName(toThreadMessage(message, botId()).text, message.author.displayName),
        autoArchiveDuration: ThreadAutoArchiveDuration.OneDay,
      });
      return thread.id;
    } catch (error) {
      // A repeat of the same event (or another bot process) got there first: same id, same thread.
      if (discordCode(error) === THREAD_ALREADY_CREATED) return message.id;
      const problem = permissionProblem(error, 'Create Public Threads and Send Messages in Threads');
      if (!problem) throw error;
      logger.warn(
        { err: error, channelId: message.channelId, problem },
        'cannot start a thread; answering in the channel',
      );
      return null;
    }
  }

  async function onMessage(message: Message): Promise<void> {
    // Bots' messages, the bot's own generated images included, are never indexed or answered.
    if (!message.inGuild() || message.author.bot || message.system) return;
    const community = { platform: 'discord' as const, externalId: message.guildId };
    if (message.attachments.size > 0) {
      // In a thread, the image is stored under the thread (where deleting it is seen) and indexed when
      // indexing is on for the thread's channel.
      const outcome = await core.indexImages({
        community,
        channelId: message.channelId,
        parentChannelId: parentChannelOf(message),
        messageId: message.id,
        authorId: message.author.id,
        permalink: message.url,
        attachments: attachmentsOf(message),
      });
      if (outcome?.refused.length) {
        logger.info({ messageId: message.id, refused: outcome.refused }, 'posted images not indexed');
      }
    }
    const mentioned = message.mentions.users.has(botId());
    const channel = message.channel;
    let messages: ThreadMessage[];
    let data: DiscordTargetData = { mode: 'thread', userId: message.author.id };
    let channelId: string;
    if (channel.isThread()) {
      // Without the Message Content intent only mentions carry text, so unmentioned follow-ups are skipped.
      const ours = channel.ownerId === botId() && config.DISCORD_MESSAGE_CONTENT;
      if (!mentioned && !ours) return;
      channelId = channel.id;
      messages = await threadHistory(channel, message, botId());
    } else {
      if (!mentioned) return;
      const threadId = await openThread(message);
      messages = [toThreadMessage(message, botId())];
      if (threadId) {
        channelId = threadId;
      } else {
        channelId = message.channelId;
        data = { ...data, replyToMessageId: message.id };
      }
    }
    await channel.sendTyping().catch(() => {});
    const turn: InboundTurn = {
      platform: 'discord',
      community,
      user: {
        id: message.author.id,
        displayName: message.member?.displayName ?? message.author.displayName,
        isAdmin: isAdmin(message.member?.permissions),
      },
      channelId,
      threadId: data.replyToMessageId ? undefined : channelId,
      command: { kind: 'chat' },
      messages,
      idempotencyKey: `discord:message:${message.id}`,
      replyTarget: {
        platform: 'discord',
        channelId,
        threadId: data.replyToMessageId ? undefined : channelId,
        data: { ...data },
      },
    };
    const outcome = await core.submit(turn);
    await afterSubmit(outcome, channelId, data.replyToMessageId);
  }

  async function onCommandOrButton(
    interaction: ChatInputCommandInteraction | ButtonInteraction,
    command: () => Command,
    ephemeral: boolean,
  ): Promise<void> {
    try {
      await interaction.deferReply(ephemeral ? { flags: MessageFlags.Ephemeral } : {});
    } catch (error) {
      const code = discordCode(error);
      if (code === ALREADY_ACKNOWLEDGED) return; // a repeat of an interaction already being answered
      if (code === UNKNOWN_INTERACTION) {
        logger.error(
          { err: error, interactionId: interaction.id },
          'interaction expired before it was deferred (over 3 s): is the process overloaded?',
        );
        return;
      }
      throw error;
    }
    let parsed: Command;
    try {
      parsed = command();
    } catch (error) {
      if (!(error instanceof UserInputError)) throw error;
      logger.info({ interactionId: interaction.id, message: error.message }, 'bad command');
      await interaction.editReply(`⚠️ ${error.message}`);
      return;
    }
    const turn: InboundTurn = {
      platform: 'discord',
      community: { platform: 'discord', externalId: interaction.guildId! },
      user: {
        id: interaction.user.id,
        displayName: interaction.user.displayName,
        isAdmin: isAdmin(interaction.memberPermissions),
      },
      channelId: interaction.channelId,
      threadId: interaction.channel?.isThread() ? interaction.channelId : undefined,
      command: parsed,
      messages: [],
      idempotencyKey: `discord:interaction:${interaction.id}`,
      replyTarget: {
        platform: 'discord',
        channelId: interaction.channelId,
        data: {
          mode: 'interaction',
          userId: interaction.user.id,
          interactionToken: interaction.token,
          expiresAt: interaction.createdTimestamp + INTERACTION_WINDOW_MS,
          maxUploadBytes: interaction.attachmentSizeLimit,
        } satisfies DiscordTargetData,
      },
    };
    const outcome = await core.submit(turn);
    if (outcome.status === 'accepted') {
      await delivery.progress(outcome.jobId, { stage: 'queued', position: outcome.position ?? 0 });
      delivery.watchPosition(outcome.jobId);
    } else if (outcome.status === 'refused') {
      await interaction.editReply(`⚠️ ${outcome.message}`);
    } else if (outcome.status === 'answered') {
      await interaction.editReply(outcome.text);
    }
  }

  /** Cancel on a progress message: the answer is only for the person who pressed it. */
  async function onCancel(interaction: ButtonInteraction<'cached' | 'raw'>, jobId: string): Promise<void> {
    try {
      await interaction.deferReply({ flags: MessageFlags.Ephemeral });
    } catch (error) {
      const code = discordCode(error);
      if (code === ALREADY_ACKNOWLEDGED) return;
      if (code === UNKNOWN_INTERACTION) {
        logger.error({ err: error, interactionId: interaction.id }, 'cancel expired before it was deferred');
        return;
      }
      throw error;
    }
    const outcome = await core.cancel({
      community: { platform: 'discord', externalId: interaction.guildId },
      jobId,
      user: { id: interaction.user.id, displayName: interaction.user.displayName },
      isAdmin: () => isAdmin(interaction.memberPermissions),
    });
    if (outcome.status === 'cancelled') {
      await delivery.cancelled(outcome.job, outcome.progressText);
      await interaction.editReply(outcome.answer);
    } else {
      await interaction.editReply(`⚠️ ${outcome.message}`);
    }
  }

  async function onInteraction(interaction: Interaction): Promise<void> {
    if (!interaction.inGuild()) return;
    if (interaction.isChatInputCommand()) {
      const ephemeral = interaction.commandName === 'gill' || interaction.commandName === 'gill-forget';
      await onCommandOrButton(interaction, () => commandFromInteraction(interaction), ephemeral);
    } else if (interaction.isButton()) {
      const button = parseButtonId(interaction.customId);
      if (!button) return;
      const { action, jobId } = button;
      if (action === 'cancel') await onCancel(interaction, jobId);
      else await onCommandOrButton(interaction, () => ({ kind: 'button', action, jobId }), false);
    }
  }

  async function onDelete(message: Message | PartialMessage): Promise<void> {
    if (!message.guildId) return;
    await core.removeMessage(
      { platform: 'discord', externalId: message.guildId },
      message.channelId,
      message.id,
    );
  }

  const guarded =
    <A extends unknown[]>(what: string, handler: (...args: A) => Promise<void>) =>
    (...args: A) => {
      handler(...args).catch((error) => logger.error({ err: error }, `${what} failed`));
    };
  client.on(Events.MessageCreate, guarded('message', onMessage));
  client.on(Events.InteractionCreate, guarded('interaction', onInteraction));
  client.on(Events.MessageDelete, guarded('message delete', onDelete));
  client.on(
    Events.MessageBulkDelete,
    guarded('bulk delete', async (messages) => {
      for (const message of messages.values()) await onDelete(message);
    }),
  );
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
    await delivery.close();
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
      await delivery.close();
      await client.destroy();
    },
  };
}
