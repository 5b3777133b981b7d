import { createHash } from 'node:crypto';
import { type APIMessage, MessageFlags, type RawFile, type REST, Routes } from 'discord.js';
import type { JobProgress } from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import type { JobRecord, Store } from '../../store/types.ts';
import type { DeliveryReceipt, PlatformAdapter } from '../core/adapter.ts';
import { PROGRESS_BUTTONS } from '../core/buttons.ts';
import type { Eta } from '../core/eta.ts';
import { formatBytes } from '../core/fetch-guard.ts';
import {
  DISCORD_MAX_CHARS,
  type RenderStyle,
  renderEta,
  renderProgress,
  renderReply,
} from '../core/render.ts';
import { buttonRow } from './components.ts';
import {
  discordCode,
  INVALID_WEBHOOK_TOKEN,
  isUndeliverable,
  permissionProblem,
  TOO_MANY_OLD_EDITS,
  UNKNOWN_MESSAGE,
  UNKNOWN_WEBHOOK,
} from './errors.ts';

/**
 * Sends replies and progress to Discord through REST only, from what the job's reply target holds, so
 * it works from any bot process and after restarts. Interaction replies edit the deferred response
 * through the interaction webhook while its token is valid (15 minutes, with a margin); after that they
 * go out through the bot's own channel message endpoints, mentioning the person who asked.
 *
 * Every message the bot creates for a reply carries a nonce derived from the job id and the part's
 * index, with enforce_nonce: Discord then answers a repeated creation (a delivery retried after the bot
 * died between posting and recording it) with the message it already made, for a few minutes. Edits
 * (the progress message, an interaction's @original) are idempotent by themselves. Interaction
 * follow-ups (the parts after the first of a reply sent through the interaction webhook) take no nonce.
 */

/** What a Discord reply target keeps in its `data`. */
export interface DiscordTargetData {
  /** 'thread': messages in a thread (or channel) the bot posts to; 'interaction': a deferred slash command or button. */
  mode: 'thread' | 'interaction';
  userId: string;
  interactionToken?: string;
  /** Epoch ms after which the interaction token is no longer used. */
  expiresAt?: number;
  /** The message showing progress, edited into the reply (the interaction's original response, or a thread message). */
  progressMessageId?: string;
  /** Set when answering in a channel instead of a thread: the message answered. */
  replyToMessageId?: string;
  /** Largest upload the channel accepts (the interaction's attachment_size_limit). */
  maxUploadBytes?: number;
}

export const DISCORD_STYLE: RenderStyle = {
  maxChars: DISCORD_MAX_CHARS,
  link: (text, url) => `[${text}](<${url}>)`,
};

/** Margin before the 15-minute token expiry, so a slow upload doesn't start on a token about to die. */
const TOKEN_MARGIN_MS = 60_000;
const DEFAULT_MAX_UPLOAD = 10 * 1024 * 1024;
const NO_PINGS = { parse: [] as never[] };

interface Body {
  content: string;
  files?: RawFile[];
  components?: unknown[];
}

/**
 * The nonce of a reply's part: 25 characters (Discord's limit) of a hash of the job id and the part's
 * index, the same in every process and on every retry.
 */
export function replyNonce(jobId: string, part: number): string {
  return createHash('sha256').update(`gill:${jobId}:${part}`).digest('base64url').slice(0, 25);
}

export function targetData(job: JobRecord): DiscordTargetData {
  return job.replyTarget.data as unknown as DiscordTargetData;
}

export class DiscordAdapter implements PlatformAdapter {
  readonly platform = 'discord' as const;

  constructor(
    private readonly deps: {
      rest: REST;
      store: Store;
      logger: Logger;
      applicationId: string;
      now?: () => number;
    },
  ) {}

  private now(): number {
    return this.deps.now?.() ?? Date.now();
  }

  private tokenValid(data: DiscordTargetData): boolean {
    return Boolean(data.interactionToken && data.expiresAt && this.now() < data.expiresAt - TOKEN_MARGIN_MS);
  }

  private async remember(job: JobRecord, patch: Partial<DiscordTargetData>): Promise<void> {
    Object.assign(job.replyTarget.data, patch);
    await this.deps.store.jobs.updateReplyTarget(job.id, patch);
  }

  /** The reply as message bodies: text chunks, with the images and buttons on the last one. */
  private async bodies(job: JobRecord): Promise<Body[]> {
    const reply = renderReply(job, DISCORD_STYLE);
    const limit = targetData(job).maxUploadBytes ?? DEFAULT_MAX_UPLOAD;
    const files: RawFile[] = [];
    const skipped: string[] = [];
    for (const image of reply.images) {
      const blob = await this.deps.store.blobs.get(image.hash);
      if (!blob) skipped.push(`${image.fileName} is no longer stored`);
      else if (blob.bytes.length > limit)
        skipped.push(`${image.fileName} is over this channel's upload limit of ${formatBytes(limit)}`);
      else files.push({ name: image.fileName, data: Buffer.from(blob.bytes), contentType: blob.mime });
    }
    const chunks = skipped.length ? [...reply.chunks, ...skipped.map((s) => `_${s}._`)] : reply.chunks;
    const bodies: Body[] = chunks.map((content) => ({ content }));
    const last = bodies.at(-1)!;
    // Discord takes at most 10 files per message.
    for (let i = 0; i < files.length; i += 10) {
      const group = files.slice(i, i + 10);
      if (i === 0) last.files = group;
      else bodies.push({ content: '\u200b', files: group });
    }
    bodies.at(-1)!.components = buttonRow(reply.buttons, job.id);
    return bodies;
  }

  async deliver(job: JobRecord): Promise<DeliveryReceipt> {
    const data = targetData(job);
    const log = this.deps.logger.child({ jobId: job.id, channelId: job.replyTarget.channelId });
    const bodies = await this.bodies(job);
    try {
      if (data.mode === 'interaction' && this.tokenValid(data)) {
        try {
          return await this.viaWebhook(data, bodies);
        } catch (error) {
          const code = discordCode(error);
          if (code !== INVALID_WEBHOOK_TOKEN && code !== UNKNOWN_WEBHOOK) throw error;
          log.info({ code }, 'interaction token no longer valid; replying through the channel');
        }
      }
      return await this.viaChannel(job, data, bodies);
    } catch (error) {
      if (!isUndeliverable(error)) throw error;
      const problem = permissionProblem(error, 'Send Messages (and Send Messages in Threads, Attach Files)');
      log.error({ err: error, problem }, 'reply cannot be delivered: missing permissions or channel gone');
      return { undeliverable: discordCode(error) };
    }
  }

  private async viaWebhook(data: DiscordTargetData, bodies: Body[]): Promise<DeliveryReceipt> {
    const { rest, applicationId } = this.deps;
    const token = data.interactionToken!;
    const ids: string[] = [];
    const [first, ...rest_] = bodies;
    const original = (await rest.patch(Routes.webhookMessage(applicationId, token, '@original'), {
      body: { content: first!.content, components: first!.components ?? [], allowed_mentions: NO_PINGS },
      files: first!.files,
      auth: false,
    })) as APIMessage;
    ids.push(original.id);
    for (const body of rest_) {
      const message = (await rest.post(Routes.webhook(applicationId, token), {
        body: { content: body.content, components: body.components ?? [], allowed_mentions: NO_PINGS },
        files: body.files,
        auth: false,
      })) as APIMessage;
      ids.push(message.id);
    }
    return { via: 'webhook', messageIds: ids };
  }

  private async viaChannel(
    job: JobRecord,
    data: DiscordTargetData,
    bodies: Body[],
  ): Promise<DeliveryReceipt> {
    const { rest } = this.deps;
    const channelId = job.replyTarget.channelId;
    const ids: string[] = [];
    const late = data.mode === 'interaction';
    let pending = bodies;
    if (late) {
      // The interaction's response can no longer be edited through its token: answer below it, naming the asker.
      pending = bodies.map((body, i) =>
        i === 0
          ? { ...body, content: `<@${data.userId}> ${body.content}`.slice(0, DISCORD_MAX_CHARS) }
          : body,
      );
    } else if (data.progressMessageId) {
      const [first, ...others] = bodies;
      try {
        const edited = (await rest.patch(Routes.channelMessage(channelId, data.progressMessageId), {
          body: { content: first!.content, components: first!.components ?? [], allowed_mentions: NO_PINGS },
          files: first!.files,
        })) as APIMessage;
        ids.push(edited.id);
        pending = others;
      } catch (error) {
        const code = discordCode(error);
        if (code !== UNKNOWN_MESSAGE && code !== TOO_MANY_OLD_EDITS) throw error;
      }
    }
    const replyTo = late ? data.progressMessageId : ids.length ? undefined : data.replyToMessageId;
    // Parts are numbered over the whole reply, so a part keeps its nonce whether or not the first was an edit.
    const offset = bodies.length - pending.length;
    for (const [i, body] of pending.entries()) {
      const message = (await rest.post(Routes.channelMessages(channelId), {
        body: {
          nonce: replyNonce(job.id, offset + i),
          enforce_nonce: true,
          content: body.content,
          components: body.components ?? [],
          allowed_mentions: late && i === 0 ? { users: [data.userId] } : NO_PINGS,
          ...(i === 0 && replyTo
            ? { message_reference: { message_id: replyTo, fail_if_not_exists: false } }
            : {}),
        },
        files: body.files,
      })) as APIMessage;
      ids.push(message.id);
    }
    if (late && data.progressMessageId) {
      // Best effort: the "thinking" response would otherwise stay forever.
      await rest
        .patch(Routes.channelMessage(channelId, data.progressMessageId), {
          body: { content: 'Finished; the answer is below.', components: [] },
        })
        .catch((error) =>
          this.deps.logger.debug({ err: error, jobId: job.id }, 'could not tidy the old response'),
        );
    }
    return { via: 'channel', messageIds: ids };
  }

  async announce(job: JobRecord, progress: JobProgress): Promise<void> {
    await this.showProgress(job, progress);
  }

  async showProgress(job: JobRecord, progress: JobProgress, eta?: Eta | null): Promise<void> {
    // `<t:…:R>` is shown relative ("in 20 seconds") and kept current by the client between edits.
    const content = renderProgress(progress, eta ? renderEta(eta, 'discord') : undefined);
    await this.editProgress(job, { content, components: buttonRow(PROGRESS_BUTTONS, job.id) }, true);
  }

  async showCancelled(job: JobRecord, text: string): Promise<void> {
    await this.editProgress(job, { content: text, components: [] }, false);
  }

  /** Edits the progress message (the interaction's response, or a thread message), posting it first if allowed. */
  private async editProgress(
    job: JobRecord,
    content: { content: string; components: unknown[] },
    create: boolean,
  ): Promise<void> {
    const { rest, applicationId } = this.deps;
    const data = targetData(job);
    const body = { ...content, allowed_mentions: NO_PINGS };
    if (data.mode === 'interaction' && this.tokenValid(data)) {
      const message = (await rest.patch(
        Routes.webhookMessage(applicationId, data.interactionToken!, '@original'),
        {
          body,
          auth: false,
        },
      )) as APIMessage;
      // Kept so the response can still be found after the token expires.
      if (!data.progressMessageId) await this.remember(job, { progressMessageId: message.id });
      return;
    }
    const channelId = job.replyTarget.channelId;
    if (data.progressMessageId) {
      try {
        await rest.patch(Routes.channelMessage(channelId, data.progressMessageId), { body });
        return;
      } catch (error) {
        const code = discordCode(error);
        if (code !== UNKNOWN_MESSAGE && code !== TOO_MANY_OLD_EDITS) throw error;
        if (data.mode === 'interaction') return;
      }
    }
    if (data.mode === 'interaction' || !create) return;
    // Answering in the channel (no thread): the progress message, later the reply, answers the message.
    const reference = data.replyToMessageId
      ? { message_reference: { message_id: data.replyToMessageId, fail_if_not_exists: false } }
      : {};
    const message = (await rest.post(Routes.channelMessages(channelId), {
      body: { ...body, ...reference, flags: MessageFlags.SuppressNotifications },
    })) as APIMessage;
    await this.remember(job, { progressMessageId: message.id });
  }
}
