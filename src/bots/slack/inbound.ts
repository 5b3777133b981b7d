import type { App, BlockAction, RespondFn, ButtonAction as SlackButton, SlashCommand } from '@slack/bolt';
import { type CommunityRef, UserInputError } from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import type { JobQueue } from '../../queue/queue.ts';
import type { JobRecord, Store } from '../../store/types.ts';
import type { BotCore, SubmitOutcome } from '../core/bot-core.ts';
import { BUTTON_LABELS, parseButtonId } from '../core/buttons.ts';
import { gillHelp, parseGillText } from '../core/commands.ts';
import { renderProgress } from '../core/render.ts';
import type { Command, InboundTurn, ThreadMessage } from '../core/turn.ts';
import type { SlackAdmins } from './admins.ts';
import { parseFind, parseImagine } from './commands.ts';
import { explainSlackError, type SlackAdapter, type SlackTargetData, slackErrorCode } from './outbound.ts';
import { escapeText, mentionsUser, plainText, toAttachment } from './text.ts';
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
  core: BotCore;
  adapter: SlackAdapter;
  threads: ThreadCache;
  admins: SlackAdmins;
  store: Store;
  queue: JobQueue;
  logger: Logger;
  botUserId: string;
  /** The workspace of the bot token, for payloads that don't name one. */
  teamId: string;
  /** Called with each accepted job whose progress message was posted (queue position updates). */
  onAnnounced?(jobId: string): void;
  /** Shows a job cancelled through the core on its progress message (the delivery's `cancelled`). */
  onCancelled(job: JobRecord, text: string): Promise<void>;
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

export function registerInbound(deps: InboundDeps): void {
  const { app, core, adapter, threads, admins, logger, botUserId } = deps;
  const community = (teamId: string | undefined): CommunityRef => ({
    platform: 'slack',
    externalId: teamId || deps.teamId,
  });

  /** Submits with the delivery held until the progress message is recorded; posts it when accepted. */
  async function submitAndAnnounce(turn: InboundTurn, header?: string): Promise<SubmitOutcome> {
    const release = adapter.expectAnnouncement(turn.idempotencyKey);
    try {
      const outcome = await core.submit(turn);
      if (outcome.status === 'accepted') {
        const progress = renderProgress(
          outcome.position === null ? { stage: 'thinking' } : { stage: 'queued', position: outcome.position },
        );
        try {
          await adapter.announce(outcome.jobId, turn.replyTarget, progress, header);
          deps.onAnnounced?.(outcome.jobId);
        } catch (error) {
          const code = slackErrorCode(error);
          if (code === 'not_in_channel' || code === 'channel_not_found' || code === 'is_archived') {
            // Nobody could see the answer: stop the job and say why to the person who asked.
            await deps.queue.cancel(outcome.jobId);
            await deps.store.jobs.cancel(outcome.jobId);
            logger.info(
              { jobId: outcome.jobId, code, channelId: turn.channelId },
              'job cancelled: cannot post in channel',
            );
            return { status: 'refused', reason: 'bad_input', message: explainSlackError(code) };
          }
          // The reply still comes through delivery, as a new message.
          logger.warn({ err: error, jobId: outcome.jobId }, 'could not post the progress message');
        }
      }
      return outcome;
    } finally {
      release();
    }
  }

  /** A mention or a thread follow-up: the thread so far is the conversation. */
  async function answerInThread(event: Record<string, unknown>, eventId: string, teamId: string | undefined) {
    const channel = String(event.channel);
    const message = fromApi(event, botUserId);
    const rootTs = message.threadTs ?? message.ts;
    threads.record(channel, message);
    threads.join(channel, rootTs);
    const messages = (await threads.messages(channel, rootTs, THREAD_MESSAGES)).map((m) =>
      threadMessage(m, botUserId),
    );
    const turn: InboundTurn = {
      platform: 'slack',
      community: community(teamId),
      user: { id: message.userId, displayName: message.userId, isAdmin: false },
      channelId: channel,
      threadId: rootTs,
      command: { kind: 'chat' },
      messages,
      idempotencyKey: `slack:event:${eventId}`,
      replyTarget: {
        platform: 'slack',
        channelId: channel,
        threadId: rootTs,
        data: { userId: message.userId },
      },
    };
    const outcome = await submitAndAnnounce(turn);
    if (outcome.status === 'refused' || outcome.status === 'answered') {
      const text =
        outcome.status === 'refused' ? `⚠️ ${escapeText(outcome.message)}` : escapeText(outcome.text);
      await app.client.chat.postMessage({ channel, thread_ts: rootTs, text });
    }
  }

  async function postError(channel: string, threadTs: string) {
    await app.client.chat.postMessage({ channel, thread_ts: threadTs, text: ERROR_TEXT }).catch(() => {});
  }

  app.event('app_mention', async ({ event, body }) => {
    const raw = event as unknown as Record<string, unknown>;
    const eventId = String((body as { event_id?: string }).event_id);
    const log = logger.child({ eventId, channelId: event.channel, user: event.user });
    if (!event.user || event.bot_id) return;
    try {
      await answerInThread(raw, eventId, (body as { team_id?: string }).team_id);
    } catch (error) {
      log.error({ err: error }, 'mention failed');
      await postError(event.channel, event.thread_ts ?? event.ts);
    }
  });

  const appliedEvents = new Set<string>();

  /** A deleted message leaves the thread cache and, with its images, the index. */
  async function removed(channel: string, ts: string, threadTs: string | undefined, teamId?: string) {
    threads.forget(channel, ts, threadTs);
    await core.removeMessage(community(teamId), channel, ts);
  }

  /** An edited message: later turns see its new text. An edit is never answered, even with a mention. */
  async function edited(channel: string, raw: Record<string, unknown>, teamId: string | undefined) {
    const after = raw.message as Record<string, unknown> | undefined;
    if (!after?.ts) return;
    const message = fromApi(after, botUserId);
    // A thread's root deleted while it has replies stays as a tombstone: for the bot it is deleted.
    if (after.subtype === 'tombstone') return removed(channel, message.ts, message.threadTs, teamId);
    // The bot's own messages are recorded as it posts them; its progress edits are not conversation.
    if (after.bot_id || !after.user || message.fromBot) return;
    threads.edit(channel, message);
  }

  app.event('message', async ({ event, body }) => {
    const raw = event as unknown as Record<string, unknown>;
    const teamId = (body as { team_id?: string }).team_id;
    const eventId = String((body as { event_id?: string }).event_id);
    const channel = String(raw.channel);
    const log = logger.child({ eventId, channelId: channel });
    try {
      if (raw.subtype === 'message_deleted' || raw.subtype === 'message_changed') {
        if (appliedEvents.has(eventId)) return; // a retry
        if (raw.subtype === 'message_changed') await edited(channel, raw, teamId);
        else {
          const previous = raw.previous_message as { thread_ts?: string } | undefined;
          await removed(channel, String(raw.deleted_ts), previous?.thread_ts, teamId);
        }
        appliedEvents.add(eventId);
        if (appliedEvents.size > REMEMBERED_EVENTS)
          appliedEvents.delete(appliedEvents.values().next().value as string);
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
      if (message.files.length) await indexPosted(raw, teamId, message);
      if (!message.threadTs || mentionsUser(message.text, botUserId)) return; // mentions come as app_mention
      if (!(await threads.botInThread(channel, message.threadTs))) return;
      await answerInThread(raw, eventId, teamId);
    } catch (error) {
      log.error({ err: error }, 'message event failed');
    }
  });

  /** Indexes a message's files when indexing is on for its channel (a thread reply's channel is the thread's). */
  async function indexPosted(
    raw: Record<string, unknown>,
    teamId: string | undefined,
    message: SlackMessage,
  ) {
    const channel = String(raw.channel);
    const ref = community(teamId);
    if (!(await core.isIndexedChannel(ref, channel))) return;
    const link = await app.client.chat
      .getPermalink({ channel, message_ts: message.ts })
      .catch(() => undefined);
    const outcome = await core.indexImages({
      community: ref,
      channelId: channel,
      messageId: message.ts,
      authorId: message.userId,
      permalink: link?.permalink ?? null,
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

  /** /imagine and /find: the result is posted in the channel, under a line saying who asked what. */
  function jobCommand(name: string, parse: (text: string) => Command) {
    app.command(name, async ({ command, ack, respond }) => {
      await ack();
      const log = logger.child({ command: name, user: command.user_id, channelId: command.channel_id });
      try {
        const text = plainText(command.text, botUserId);
        let parsed: Command;
        try {
          parsed = parse(text);
        } catch (error) {
          if (error instanceof UserInputError) return void (await ephemeral(respond, `⚠️ ${error.message}`));
          throw error;
        }
        const data: SlackTargetData = { userId: command.user_id, responseUrl: command.response_url };
        const turn = commandTurn(command, parsed, data);
        const header = `<@${command.user_id}> ${name} ${escapeText(shorten(text, 300))}`;
        const outcome = await submitAndAnnounce(turn, header);
        if (outcome.status === 'refused') await ephemeral(respond, `⚠️ ${outcome.message}`);
        if (outcome.status === 'answered') await ephemeral(respond, outcome.text);
      } catch (error) {
        log.error({ err: error }, 'command failed');
        await ephemeral(respond, ERROR_TEXT).catch(() => {});
      }
    });
  }

  function commandTurn(
    command: SlashCommand,
    parsed: Command,
    data: SlackTargetData,
    isAdmin = false,
  ): InboundTurn {
    return {
      platform: 'slack',
      community: community(command.team_id),
      user: { id: command.user_id, displayName: command.user_name, isAdmin },
      channelId: command.channel_id,
      command: parsed,
      messages: [],
      idempotencyKey: `slack:command:${command.trigger_id}`,
      replyTarget: { platform: 'slack', channelId: command.channel_id, data: { ...data } },
    };
  }

  jobCommand('/imagine', parseImagine);
  jobCommand('/find', parseFind);

  app.command('/gill', async ({ command, ack, respond }) => {
    await ack();
    const log = logger.child({ command: '/gill', user: command.user_id, channelId: command.channel_id });
    try {
      if (/^\s*help\s*$/i.test(command.text)) return void (await ephemeral(respond, gillHelp()));
      let parsed: Command;
      try {
        parsed = parseGillText(command.text, command.channel_id);
      } catch (error) {
        if (error instanceof UserInputError) return void (await ephemeral(respond, `⚠️ ${error.message}`));
        throw error;
      }
      const isAdmin = parsed.kind === 'config' ? await admins.isAdmin(command.user_id) : false;
      const outcome = await core.submit(commandTurn(command, parsed, { userId: command.user_id }, isAdmin));
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
  });

  app.action<BlockAction<SlackButton>>(/^gill:/, async ({ ack, body, action, respond }) => {
    await ack();
    const parsedId = parseButtonId(action.action_id);
    if (!parsedId) return;
    const channel = body.channel?.id ?? body.container?.channel_id;
    const message = body.message as { ts?: string; thread_ts?: string } | undefined;
    const log = logger.child({ action: action.action_id, user: body.user.id, channelId: channel });
    if (!channel || !message?.ts) return;
    const threadTs = message.thread_ts ?? message.ts;
    const { action: pressed, jobId } = parsedId;
    try {
      if (pressed === 'cancel') {
        const outcome = await core.cancel({
          community: community(body.team?.id ?? body.user.team_id),
          jobId,
          user: { id: body.user.id, displayName: body.user.name ?? body.user.id },
          isAdmin: () => admins.isAdmin(body.user.id),
        });
        // The progress message itself shows the cancellation; refusals are for the presser only.
        if (outcome.status === 'cancelled') await deps.onCancelled(outcome.job, outcome.progressText);
        else await ephemeral(respond, `⚠️ ${outcome.message}`);
        return;
      }
      const turn: InboundTurn = {
        platform: 'slack',
        community: community(body.team?.id ?? body.user.team_id),
        user: { id: body.user.id, displayName: body.user.name ?? body.user.id, isAdmin: false },
        channelId: channel,
        threadId: threadTs,
        command: { kind: 'button', action: pressed, jobId },
        messages: [],
        idempotencyKey: `slack:action:${body.trigger_id}`,
        replyTarget: {
          platform: 'slack',
          channelId: channel,
          threadId: threadTs,
          data: { userId: body.user.id },
        },
      };
      const header = `<@${body.user.id}> pressed “${BUTTON_LABELS[pressed]}”`;
      const outcome = await submitAndAnnounce(turn, header);
      if (outcome.status === 'refused') await ephemeral(respond, `⚠️ ${outcome.message}`);
    } catch (error) {
      log.error({ err: error }, 'button failed');
      await ephemeral(respond, ERROR_TEXT).catch(() => {});
    }
  });
}
