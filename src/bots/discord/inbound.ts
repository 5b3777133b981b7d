import {
  type ButtonInteraction,
  type Channel,
  type ChatInputCommandInteraction,
  type Client,
  type Interaction,
  type Message,
  MessageFlags,
  type PartialMessage,
  ThreadAutoArchiveDuration,
} from 'discord.js';
import type { Config } from '../../config.ts';
import { UserInputError } from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import type { ViewerScope } from '../../store/types.ts';
import { parseButtonId } from '../core/buttons.ts';
import type { Bot } from '../core/start.ts';
import { buildTurn, type Command, type ThreadMessage, type TurnFields } from '../core/turn.ts';
import { commandFromInteraction } from './commands.ts';
import {
  ALREADY_ACKNOWLEDGED,
  discordCode,
  permissionProblem,
  THREAD_ALREADY_CREATED,
  UNKNOWN_INTERACTION,
} from './errors.ts';
import { attachmentsOf, isAdmin, parentChannelOf, threadHistory, toThreadMessage } from './history.ts';
import type { DiscordTargetData } from './outbound.ts';
import { scopeOf, visibilityOf } from './visibility.ts';

/**
 * Gateway events become Turns for the core. An @mention in a channel is answered in a new thread started
 * from it (the thread's id is the message's id); later messages in that thread continue the conversation;
 * slash commands and buttons are deferred at once and answered by editing the deferred response.
 */

const INTERACTION_WINDOW_MS = 15 * 60_000;
const THREAD_NAME_CHARS = 90;

function threadName(text: string, author: string): string {
  const line = text.split('\n')[0]!.trim();
  if (!line) return `Conversation with ${author}`.slice(0, THREAD_NAME_CHARS);
  return line.length > THREAD_NAME_CHARS ? `${line.slice(0, THREAD_NAME_CHARS - 1)}…` : line;
}

/** The one place a Discord Turn is made: in the guild's community, answered where it was asked. */
export function discordTurn(guildId: string, fields: Omit<TurnFields, 'community'>, data: DiscordTargetData) {
  return buildTurn('discord', { community: { platform: 'discord', externalId: guildId }, ...fields }, data);
}

export class DiscordInbound {
  constructor(private readonly deps: { client: Client; bot: Bot; config: Config; logger: Logger }) {}

  private botId(): string {
    return this.deps.client.user!.id;
  }

  /** Posts a short notice in a channel; failures (no permission to write there either) are logged. */
  private async notice(channelId: string, content: string, replyTo?: string): Promise<void> {
    const channel = await this.deps.client.channels.fetch(channelId).catch(() => null);
    if (!channel?.isSendable()) return;
    await channel
      .send({ content, reply: replyTo ? { messageReference: replyTo, failIfNotExists: false } : undefined })
      .catch((error) =>
        this.deps.logger.error(
          { err: error, channelId, problem: permissionProblem(error, 'Send Messages') },
          'could not post a notice',
        ),
      );
  }

  /** Starts the thread for a mention; null when it can't (missing permission), after saying why. */
  private async openThread(message: Message<true>): Promise<string | null> {
    try {
      const thread = await message.startThread({
        name: threadName(toThreadMessage(message, this.botId()).text, message.author.displayName),
        autoArchiveDuration: ThreadAutoArchiveDuration.OneDay,
      });
      return thread.id;
    } catch (error) {
      // A repeat of the same event (or another bot process) got there first: same id, same thread.
      if (discordCode(error) === THREAD_ALREADY_CREATED) return message.id;
      const problem = permissionProblem(error, 'Create Public Threads and Send Messages in Threads');
      if (!problem) throw error;
      this.deps.logger.warn(
        { err: error, channelId: message.channelId, problem },
        'cannot start a thread; answering in the channel',
      );
      return null;
    }
  }

  /** Posted images go to the index (when it is on there); a mention, or a message in our thread, is a chat turn. */
  async message(message: Message): Promise<void> {
    // Bots' messages, the bot's own generated images included, are never indexed or answered.
    if (!message.inGuild() || message.author.bot || message.system) return;
    const { bot, config, logger } = this.deps;
    const botId = this.botId();
    if (message.attachments.size > 0) {
      // In a thread, the image is stored under the thread (where deleting it is seen) and indexed when
      // indexing is on for the thread's channel.
      const outcome = await bot.core.indexImages({
        community: { platform: 'discord', externalId: message.guildId },
        channelId: message.channelId,
        parentChannelId: parentChannelOf(message),
        messageId: message.id,
        authorId: message.author.id,
        permalink: message.url,
        visibility: visibilityOf(message.channel),
        attachments: attachmentsOf(message),
      });
      if (outcome?.refused.length) {
        logger.info({ messageId: message.id, refused: outcome.refused }, 'posted images not indexed');
      }
    }
    const mentioned = message.mentions.users.has(botId);
    const channel = message.channel;
    let messages: ThreadMessage[];
    let data: DiscordTargetData = { mode: 'thread', userId: message.author.id };
    let channelId: string;
    let scope: ViewerScope;
    if (channel.isThread()) {
      // Without the Message Content intent only mentions carry text, so unmentioned follow-ups are skipped.
      const ours = channel.ownerId === botId && config.DISCORD_MESSAGE_CONTENT;
      if (!mentioned && !ours) return;
      channelId = channel.id;
      scope = scopeOf(channel);
      messages = await threadHistory(channel, message, botId);
    } else {
      if (!mentioned) return;
      const threadId = await this.openThread(message);
      messages = [toThreadMessage(message, botId)];
      if (threadId) {
        channelId = threadId;
        scope = { channelId: message.channelId, threadId };
      } else {
        channelId = message.channelId;
        scope = scopeOf(channel);
        data = { ...data, replyToMessageId: message.id };
      }
    }
    await channel.sendTyping().catch(() => {});
    const outcome = await bot.submit(
      discordTurn(
        message.guildId,
        {
          user: {
            id: message.author.id,
            displayName: message.member?.displayName ?? message.author.displayName,
            isAdmin: isAdmin(message.member?.permissions),
          },
          channelId,
          threadId: data.replyToMessageId ? undefined : channelId,
          scope,
          command: { kind: 'chat' },
          messages,
          idempotencyKey: `discord:message:${message.id}`,
        },
        data,
      ),
    );
    if (outcome.status === 'refused')
      await this.notice(channelId, `⚠️ ${outcome.message}`, data.replyToMessageId);
    else if (outcome.status === 'answered') await this.notice(channelId, outcome.text, data.replyToMessageId);
  }

  /** Defers the interaction (the 3-second window); false when it was already answered or has expired. */
  private async defer(interaction: ChatInputCommandInteraction | ButtonInteraction, ephemeral: boolean) {
    try {
      await interaction.deferReply(ephemeral ? { flags: MessageFlags.Ephemeral } : {});
      return true;
    } catch (error) {
      const code = discordCode(error);
      if (code === ALREADY_ACKNOWLEDGED) return false; // a repeat of an interaction already being answered
      if (code === UNKNOWN_INTERACTION) {
        this.deps.logger.error(
          { err: error, interactionId: interaction.id },
          'interaction expired before it was deferred (over 3 s): is the process overloaded?',
        );
        return false;
      }
      throw error;
    }
  }

  private async commandOrButton(
    interaction: ChatInputCommandInteraction<'cached' | 'raw'> | ButtonInteraction<'cached' | 'raw'>,
    command: () => Command,
    ephemeral: boolean,
  ): Promise<void> {
    if (!(await this.defer(interaction, ephemeral))) return;
    let parsed: Command;
    try {
      parsed = command();
    } catch (error) {
      if (!(error instanceof UserInputError)) throw error;
      this.deps.logger.info({ interactionId: interaction.id, message: error.message }, 'bad command');
      await interaction.editReply(`⚠️ ${error.message}`);
      return;
    }
    const outcome = await this.deps.bot.submit(
      discordTurn(
        interaction.guildId,
        {
          user: {
            id: interaction.user.id,
            displayName: interaction.user.displayName,
            isAdmin: isAdmin(interaction.memberPermissions),
          },
          channelId: interaction.channelId,
          threadId: interaction.channel?.isThread() ? interaction.channelId : undefined,
          // An uncached channel gives no parent: the channel alone (a thread's private images stay hidden).
          scope: interaction.channel
            ? scopeOf(interaction.channel)
            : { channelId: interaction.channelId, threadId: null },
          command: parsed,
          messages: [],
          idempotencyKey: `discord:interaction:${interaction.id}`,
        },
        {
          mode: 'interaction',
          userId: interaction.user.id,
          interactionToken: interaction.token,
          expiresAt: interaction.createdTimestamp + INTERACTION_WINDOW_MS,
          maxUploadBytes: interaction.attachmentSizeLimit,
        },
      ),
    );
    if (outcome.status === 'refused') await interaction.editReply(`⚠️ ${outcome.message}`);
    else if (outcome.status === 'answered') await interaction.editReply(outcome.text);
  }

  /** Cancel on a progress message: the answer is only for the person who pressed it. */
  private async cancel(interaction: ButtonInteraction<'cached' | 'raw'>, jobId: string): Promise<void> {
    if (!(await this.defer(interaction, true))) return;
    const outcome = await this.deps.bot.cancel({
      community: { platform: 'discord', externalId: interaction.guildId },
      jobId,
      user: { id: interaction.user.id, displayName: interaction.user.displayName },
      isAdmin: () => isAdmin(interaction.memberPermissions),
    });
    await interaction.editReply(outcome.status === 'cancelled' ? outcome.answer : `⚠️ ${outcome.message}`);
  }

  async interaction(interaction: Interaction): Promise<void> {
    if (!interaction.inGuild()) return;
    if (interaction.isChatInputCommand()) {
      const ephemeral = ['gill', 'gill-forget', 'gill-index-me'].includes(interaction.commandName);
      await this.commandOrButton(interaction, () => commandFromInteraction(interaction), ephemeral);
    } else if (interaction.isButton()) {
      const button = parseButtonId(interaction.customId);
      if (!button) return;
      const { action, jobId } = button;
      if (action === 'cancel') await this.cancel(interaction, jobId);
      else await this.commandOrButton(interaction, () => ({ kind: 'button', action, jobId }), false);
    }
  }

  /** A deleted channel or thread: its images leave the index. */
  async channelDeleted(channel: Channel): Promise<void> {
    if (channel.isDMBased()) return;
    await this.deps.bot.core.removeChannel({ platform: 'discord', externalId: channel.guildId }, channel.id);
  }

  /** An edited message: the images of attachments it no longer has leave the index. */
  async edited(message: Message | PartialMessage): Promise<void> {
    if (!message.guildId || message.partial) return;
    await this.deps.bot.core.removeDroppedAttachments(
      { platform: 'discord', externalId: message.guildId },
      {
        channelId: message.channelId,
        messageId: message.id,
        keptAttachmentIds: [...message.attachments.keys()],
      },
    );
  }

  /** A deleted message's images leave the index. */
  async deleted(message: Message | PartialMessage): Promise<void> {
    if (!message.guildId) return;
    await this.deps.bot.core.removeMessage(
      { platform: 'discord', externalId: message.guildId },
      message.channelId,
      message.id,
    );
  }
}
