import type { App, BlockAction, RespondFn, ButtonAction as SlackButton, SlashCommand } from '@slack/bolt';
import { type CommunityRef, UserInputError } from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import type { Visibility } from '../../store/types.ts';
import { BUTTON_LABELS, parseButtonId } from '../core/buttons.ts';
import { gillHelp, parseGillText } from '../core/commands.ts';
import type { Bot } from '../core/start.ts';
import { parseFind, parseImagine } from '../core/text-commands.ts';
import { buildTurn, type Command, type ThreadMessage, type TurnFields } from '../core/turn.ts';
import type { SlackAdmins } from './admins.ts';
import type { SlackTargetData } from './outbound.ts';
import { escapeText, mentionsUser, plainText, slackAttachmentId, toAttachment } from './text.ts';
import { fromApi, type SlackMessage, type ThreadCache } from './threads.ts';

/**
 * Slack events, slash commands and button presses become Turns for the core. Bolt acknowledges events
 * before these listeners run, and commands and buttons are acknowledged first thing, so the 3-second
 * window never depends on the queue or the database. Slack retries (X-Slack-Retry-Num, retry_attempt)
 * carry the same event_id, which is the job's idempotency key in the store: a retry never answers twice,
 * also after a restart. Edits and deletions (message_changed, message_deleted) start no job: they update
 * the thread cache and the index, and their event ids are remembered in memory, like the cache itself.
 */

export interface InboundDeps {
  app: App;
  bot: Bot;
  threads: ThreadCache;
  admins: SlackAdmins;
  logger: Logger;
  botUserId: string;
  /** The workspace of the bot token, for payloads that don't name one. */
  teamId: string;
}

/** Messages read from a thread for context; the core trims them to the community's setting. */
const THREAD_MESSAGES = 100;

/** Event ids of edits and deletions applied: they start no job, so the store does not remember them. */
const REMEMBERED_EVENTS = 5000;

const ERROR_TEXT = '⚠️ Something went wrong on my side while handling this. It was logged; please try again.';

function threadMessage(message: SlackMessage, botUserId: string): ThreadMessage {
  return {
    id: message.ts,
    role: message.fromBot ? 'assistant' : 'user',
    authorId: message.userId,
    authorName: message.fromBot ? 'gill' : message.userId,
    text: plainText(message.text, botUserId),
    attachments: message.files.filter((f) => f.url_private_download || f.url_private).map(toAttachment),
  };
}

function ephemeral(respond: RespondFn, text: string) {
  return respond({ response_type: 'ephemeral', replace_original: false, text });
}

function shorten(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * The one place a Slack Turn is made: answered in the channel (and thread) it came from. Everyone in a
 * channel sees its threads, so retrieval is scoped to the channel.
 */
export function slackTurn(fields: Omit<TurnFields, 'scope'>, data: SlackTargetData) {
  return buildTurn('slack', { ...fields, scope: { channelId: fields.channelId, threadId: null } }, data);
}

/**
 * Who can see a message event's channel, from its channel_type: 'channel' is public, 'group' a private
 * channel; direct messages ('im', 'mpim') and anything else are never indexed (null).
 */
function visibilityOfEvent(raw: Record<string, unknown>): Visibility | null {
  if (raw.channel_type === 'channel') return 'public';
  if (raw.channel_type === 'group') return 'private';
  return null;
}

export class SlackInbound {
  /** Event ids of edits and deletions applied (a retry of one is skipped). */
  private readonly appliedEvents = new Set<string>();

  constructor(private readonly deps: InboundDeps) {}

  /** Listens for mentions, thread messages, edits and deletions, the slash commands and the buttons. */
  register(): void {
    const { app } = this.deps;
    app.event('app_mention', (args) => this.mention(args.event, args.body));
    app.event('message', (args) => this.message(args.event as unknown as Record<string, unknown>, args.body));
    app.event('file_deleted', (args) => this.fileDeleted(args.event.file_id, args.body));
    this.jobCommand('/imagine', parseImagine);
    this.jobCommand('/find', parseFind);
    app.command('/gill', (args) => this.gill(args.command, args.ack, args.respond));
    app.action<BlockAction<SlackButton>>(/^gill:/, (args) =>
      this.button(args.ack, args.body, args.action, args.respond),
    );
  }

  private community(teamId: string | undefined): CommunityRef {
    return { platform: 'slack', externalId: teamId || this.deps.teamId };
  }

  /** A mention or a thread follow-up: the thread so far is the conversation. */
  private async answerInThread(event: Record<string, unknown>, eventId: string, teamId: string | undefined) {
    const { app, bot, threads, botUserId } = this.deps;
    const channel = String(event.channel);
    const message = fromApi(event, botUserId);
    const rootTs = message.threadTs ?? message.ts;
    threads.record(channel, message);
    threads.join(channel, rootTs);
    const messages = (await threads.messages(channel, rootTs, THREAD_MESSAGES)).map((m) =>
      threadMessage(m, botUserId),
    );
    const outcome = await bot.submit(
      slackTurn(
        {
          community: this.community(teamId),
          user: { id: message.userId, displayName: message.userId, isAdmin: false },
          channelId: channel,
          threadId: rootTs,
          command: { kind: 'chat' },
          messages,
          idempotencyKey: `slack:event:${eventId}`,
        },
        { userId: message.userId },
      ),
    );
    if (outcome.status === 'refused' || outcome.status === 'answered') {
      const text =
        outcome.status === 'refused' ? `⚠️ ${escapeText(outcome.message)}` : escapeText(outcome.text);
      await app.client.chat.postMessage({ channel, thread_ts: rootTs, text });
    }
  }

  private async postError(channel: string, threadTs: string) {
    await this.deps.app.client.chat
      .postMessage({ channel, thread_ts: threadTs, text: ERROR_TEXT })
      .catch(() => {});
  }

  private async mention(
    event: { channel: string; user?: string; bot_id?: string; ts: string; thread_ts?: string },
    body: unknown,
  ) {
    const eventId = String((body as { event_id?: string }).event_id);
    const log = this.deps.logger.child({ eventId, channelId: event.channel, user: event.user });
    if (!event.user || event.bot_id) return;
    try {
      await this.answerInThread(
        event as unknown as Record<string, unknown>,
        eventId,
        (body as { team_id?: string }).team_id,
      );
    } catch (error) {
      log.error({ err: error }, 'mention failed');
      await this.postError(event.channel, event.thread_ts ?? event.ts);
    }
  }

  /** A deleted message leaves the thread cache and, with its images, the index. */
  private async removed(channel: string, ts: string, threadTs: string | undefined, teamId?: string) {
    this.deps.threads.forget(channel, ts, threadTs);
    await this.deps.bot.core.removeMessage(this.community(teamId), channel, ts);
  }

  /** An edited message: later turns see its new text. An edit is never answered, even with a mention. */
  private async edited(channel: string, raw: Record<string, unknown>, teamId: string | undefined) {
    const after = raw.message as Record<string, unknown> | undefined;
    if (!after?.ts) return;
    const message = fromApi(after, this.deps.botUserId);
    // A thread's root deleted while it has replies stays as a tombstone: for the bot it is deleted.
    if (after.subtype === 'tombstone') return this.removed(channel, message.ts, message.threadTs, teamId);
    // The bot's own messages are recorded as it posts them; its progress edits are not conversation.
    if (after.bot_id || !after.user || message.fromBot) return;
    this.deps.threads.edit(channel, message);
    // Files the edit took out of the message leave the index.
    await this.deps.bot.core.removeDroppedAttachments(this.community(teamId), {
      channelId: channel,
      messageId: message.ts,
      keptAttachmentIds: message.files.map((file) => slackAttachmentId(file.id)),
    });
  }

  /** A file deleted from the workspace leaves the index. */
  private async fileDeleted(fileId: string, body: unknown) {
    const teamId = (body as { team_id?: string }).team_id;
    try {
      await this.deps.bot.core.removeAttachment(this.community(teamId), slackAttachmentId(fileId));
    } catch (error) {
      this.deps.logger.error({ err: error, fileId }, 'file_deleted failed');
    }
  }

  private async message(raw: Record<string, unknown>, body: unknown) {
    const { threads, botUserId } = this.deps;
    const teamId = (body as { team_id?: string }).team_id;
    const eventId = String((body as { event_id?: string }).event_id);
    const channel = String(raw.channel);
    const log = this.deps.logger.child({ eventId, channelId: channel });
    try {
      if (raw.subtype === 'message_deleted' || raw.subtype === 'message_changed') {
        if (this.appliedEvents.has(eventId)) return; // a retry
        if (raw.subtype === 'message_changed') await this.edited(channel, raw, teamId);
        else {
          const previous = raw.previous_message as { thread_ts?: string } | undefined;
          await this.removed(channel, String(raw.deleted_ts), previous?.thread_ts, teamId);
        }
        this.appliedEvents.add(eventId);
        if (this.appliedEvents.size > REMEMBERED_EVENTS)
          this.appliedEvents.delete(this.appliedEvents.values().next().value as string);
        return;
      }
      if (raw.subtype !== undefined && raw.subtype !== 'file_share' && raw.subtype !== 'thread_broadcast')
        return;
      const message = fromApi(raw, botUserId);
      threads.record(channel, message);
      // Other bots are context but never answered, so two bots can't talk to each other forever, and their
      // files are not indexed. The bot's own messages (its generated images) never get here: Bolt's
      // ignoreSelf drops events from its user.
      if (raw.bot_id || !raw.user) return;
      if (message.files.length) await this.indexPosted(raw, teamId, message);
      if (!message.threadTs || mentionsUser(message.text, botUserId)) return; // mentions come as app_mention
      if (!(await threads.botInThread(channel, message.threadTs))) return;
      await this.answerInThread(raw, eventId, teamId);
    } catch (error) {
      log.error({ err: error }, 'message event failed');
    }
  }

  /** Indexes a message's files when indexing is on for its channel (a thread reply's channel is the thread's). */
  private async indexPosted(raw: Record<string, unknown>, teamId: string | undefined, message: SlackMessage) {
    const { app, bot } = this.deps;
    const channel = String(raw.channel);
    const ref = this.community(teamId);
    const visibility = visibilityOfEvent(raw);
    if (!visibility || !(await bot.core.isIndexedChannel(ref, channel))) return;
    const link = await app.client.chat
      .getPermalink({ channel, message_ts: message.ts })
      .catch(() => undefined);
    const outcome = await bot.core.indexImages({
      community: ref,
      channelId: channel,
      messageId: message.ts,
      authorId: message.userId,
      permalink: link?.permalink ?? null,
      visibility,
      attachments: message.files.map(toAttachment),
    });
    if (outcome?.refused.length) {
      await app.client.chat.postEphemeral({
        channel,
        user: message.userId,
        text: `Not added to this workspace's image index:\n${outcome.refused.map((r) => `• ${escapeText(r)}`).join('\n')}`,
      });
    }
  }

  /** A slash command's turn: no thread, the person who typed it. */
  private commandTurn(command: SlashCommand, parsed: Command, data: SlackTargetData, isAdmin = false) {
    return slackTurn(
      {
        community: this.community(command.team_id),
        user: { id: command.user_id, displayName: command.user_name, isAdmin },
        channelId: command.channel_id,
        command: parsed,
        messages: [],
        idempotencyKey: `slack:command:${command.trigger_id}`,
      },
      data,
    );
  }

  /** /imagine and /find: the result is posted in the channel, under a line saying who asked what. */
  private jobCommand(name: string, parse: (text: string) => Command) {
    this.deps.app.command(name, async ({ command, ack, respond }) => {
      await ack();
      const log = this.deps.logger.child({
        command: name,
        user: command.user_id,
        channelId: command.channel_id,
      });
      try {
        const text = plainText(command.text, this.deps.botUserId);
        let parsed: Command;
        try {
          parsed = parse(text);
        } catch (error) {
          if (error instanceof UserInputError) return void (await ephemeral(respond, `⚠️ ${error.message}`));
          throw error;
        }
        const header = `<@${command.user_id}> ${name} ${escapeText(shorten(text, 300))}`;
        const data: SlackTargetData = { userId: command.user_id, responseUrl: command.response_url, header };
        const outcome = await this.deps.bot.submit(this.commandTurn(command, parsed, data));
        if (outcome.status === 'refused') await ephemeral(respond, `⚠️ ${outcome.message}`);
        if (outcome.status === 'answered') await ephemeral(respond, outcome.text);
      } catch (error) {
        log.error({ err: error }, 'command failed');
        await ephemeral(respond, ERROR_TEXT).catch(() => {});
      }
    });
  }

  /** /gill: help, configuration (admins) and forget, answered only to the person who typed it. */
  private async gill(command: SlashCommand, ack: () => Promise<void>, respond: RespondFn) {
    await ack();
    const log = this.deps.logger.child({
      command: '/gill',
      user: command.user_id,
      channelId: command.channel_id,
    });
    try {
      if (/^\s*help\s*$/i.test(command.text)) return void (await ephemeral(respond, gillHelp()));
      let parsed: Command;
      try {
        parsed = parseGillText(command.text, command.channel_id);
      } catch (error) {
        if (error instanceof UserInputError) return void (await ephemeral(respond, `⚠️ ${error.message}`));
        throw error;
      }
      const isAdmin = parsed.kind === 'config' ? await this.deps.admins.isAdmin(command.user_id) : false;
      const turn = this.commandTurn(command, parsed, { userId: command.user_id }, isAdmin);
      const outcome = await this.deps.bot.submit(turn);
      if (outcome.status === 'answered') await ephemeral(respond, outcome.text);
      else if (outcome.status === 'refused') {
        const hint =
          outcome.reason === 'not_admin'
            ? ' Workspace admins and owners, and users listed in SLACK_ADMIN_USERS, can.'
            : '';
        await ephemeral(respond, `⚠️ ${outcome.message}${hint}`);
      }
    } catch (error) {
      log.error({ err: error }, '/gill failed');
      await ephemeral(respond, ERROR_TEXT).catch(() => {});
    }
  }

  /** A reply's button (a new job in its thread) or Cancel on a progress message. */
  private async button(
    ack: () => Promise<void>,
    body: BlockAction<SlackButton>,
    action: SlackButton,
    respond: RespondFn,
  ) {
    await ack();
    const parsedId = parseButtonId(action.action_id);
    if (!parsedId) return;
    const channel = body.channel?.id ?? body.container?.channel_id;
    const message = body.message as { ts?: string; thread_ts?: string } | undefined;
    const log = this.deps.logger.child({ action: action.action_id, user: body.user.id, channelId: channel });
    if (!channel || !message?.ts) return;
    const threadTs = message.thread_ts ?? message.ts;
    const { action: pressed, jobId } = parsedId;
    const community = this.community(body.team?.id ?? body.user.team_id);
    const displayName = body.user.name ?? body.user.id;
    try {
      if (pressed === 'cancel') {
        const outcome = await this.deps.bot.cancel({
          community,
          jobId,
          user: { id: body.user.id, displayName },
          isAdmin: () => this.deps.admins.isAdmin(body.user.id),
        });
        // The progress message itself shows the cancellation; refusals are for the presser only.
        if (outcome.status !== 'cancelled') await ephemeral(respond, `⚠️ ${outcome.message}`);
        return;
      }
      const outcome = await this.deps.bot.submit(
        slackTurn(
          {
            community,
            user: { id: body.user.id, displayName, isAdmin: false },
            channelId: channel,
            threadId: threadTs,
            command: { kind: 'button', action: pressed, jobId },
            messages: [],
            idempotencyKey: `slack:action:${body.trigger_id}`,
          },
          { userId: body.user.id, header: `<@${body.user.id}> pressed “${BUTTON_LABELS[pressed]}”` },
        ),
      );
      if (outcome.status === 'refused') await ephemeral(respond, `⚠️ ${outcome.message}`);
    } catch (error) {
      log.error({ err: error }, 'button failed');
      await ephemeral(respond, ERROR_TEXT).catch(() => {});
    }
  }
}
