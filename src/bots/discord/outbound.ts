import { createHash } from 'node:crypto';
import { type APIMessage, MessageFlags, type RawFile, type REST, Routes } from 'discord.js';
import type { JobProgress } from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import type { HeldClaim } from '../../queue/delivery.ts';
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
  INVALID_FORM_BODY,
  INVALID_WEBHOOK_TOKEN,
  isUndeliverable,
  permissionProblem,
  REQUEST_TOO_LARGE,
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
 * follow-ups (webhook messages) take no nonce, so the parts after an interaction's first go out as
 * channel messages with their nonce too. Each part is recorded with the job once posted, and the
 * delivery claim is confirmed before each, so a retried delivery continues where the last one stopped.
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
  /** Reply parts posted so far and their message ids (a retried delivery starts after them). */
  sentParts?: number;
  messageIds?: string[];
}

export const DISCORD_STYLE: RenderStyle = {
  maxChars: DISCORD_MAX_CHARS,
  link: (text, url) => `[${text}](<${url}>)`,
};

/** Margin before the 15-minute token expiry, so a slow upload doesn't start on a token about to die. */
const TOKEN_MARGIN_MS = 60_000;
const DEFAULT_MAX_UPLOAD = 10 * 1024 * 1024;
const NO_PINGS = { parse: [] as never[] };
/** Webhook edit errors after which the reply goes out through the channel instead. */
const WEBHOOK_FALLBACK = new Set([
  INVALID_WEBHOOK_TOKEN,
  UNKNOWN_WEBHOOK,
  INVALID_FORM_BODY,
  REQUEST_TOO_LARGE,
]);

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

  async deliver(job: JobRecord, claim?: HeldClaim): Promise<DeliveryReceipt> {
    const data = targetData(job);
    const log = this.deps.logger.child({ jobId: job.id, channelId: job.replyTarget.channelId });
    const bodies = await this.bodies(job);
    const ids = [...(data.messageIds ?? [])];
    let webhook = data.mode === 'interaction' && this.tokenValid(data);
    try {
      for (let part = data.sentParts ?? 0; part < bodies.length; part++) {
        await claim?.confirm();
        let id: string | null = null;
        if (webhook && part === 0) {
          try {
            id = await this.editOriginal(data, bodies[0]!);
          } catch (error) {
            const code = discordCode(error);
            if (code === null || !WEBHOOK_FALLBACK.has(code)) throw error;
            // A dead token, or a body Discord refuses there: the channel route, mentioning the asker.
            log.warn({ err: error }, 'interaction response not editable; replying through the channel');
            webhook = false;
          }
        }
        id ??= await this.postPart(job, data, bodies[part]!, part, webhook);
        ids.push(id);
        // The ledger: a retried delivery starts after the parts recorded here.
        await this.remember(job, { sentParts: part + 1, messageIds: ids });
      }
      // The interaction's response still says "thinking" unless it became the reply's first part.
      if (data.mode === 'interaction' && ids[0] !== data.progressMessageId)
        await this.tidyOriginal(job, data);
      return { via: webhook ? 'webhook' : 'channel', messageIds: ids };
    } catch (error) {
      if (!isUndeliverable(error)) throw error;
      const problem = permissionProblem(error, 'Send Messages (and Send Messages in Threads, Attach Files)');
      log.error({ err: error, problem }, 'reply cannot be delivered: missing permissions or channel gone');
      return { undeliverable: discordCode(error) };
    }
  }

  /** One text-only message saying the reply could not be posted, through whichever route still works. */
  async giveUp(job: JobRecord, text: string): Promise<DeliveryReceipt> {
    const data = targetData(job);
    const body = { content: `<@${data.userId}> ${text}` };
    if (data.mode === 'interaction' && this.tokenValid(data)) {
      try {
        return { gaveUp: true, messageIds: [await this.editOriginal(data, { content: text })] };
      } catch (error) {
        this.deps.logger.warn({ err: error, jobId: job.id }, 'failure notice not posted as the response');
      }
    }
    const message = (await this.deps.rest.post(Routes.channelMessages(job.replyTarget.channelId), {
      body: {
        ...body,
        nonce: replyNonce(job.id, -1),
        enforce_nonce: true,
        allowed_mentions: { users: [data.userId] },
      },
    })) as APIMessage;
    return { gaveUp: true, messageIds: [message.id] };
  }

  /** Edits the interaction's response into the reply's first part (idempotent by itself). */
  private async editOriginal(data: DiscordTargetData, body: Body): Promise<string> {
    const { rest, applicationId } = this.deps;
    const original = (await rest.patch(
      Routes.webhookMessage(applicationId, data.interactionToken!, '@original'),
      {
        body: { content: body.content, components: body.components ?? [], allowed_mentions: NO_PINGS },
        files: body.files,
        auth: false,
      },
    )) as APIMessage;
    return original.id;
  }

  /**
   * Posts part `part` of the reply as a channel message with its nonce (a thread's progress message is
   * edited into the first part instead). Interaction follow-ups go this way too, since webhook follow-ups
   * take no nonce; only where the bot may not post in the channel do they fall back to the webhook. A
   * body Discord refuses (50035 invalid form, 40005 too large) is sent again without its files, saying so.
   */
  private async postPart(
    job: JobRecord,
    data: DiscordTargetData,
    body: Body,
    part: number,
    webhook: boolean,
  ): Promise<string> {
    const channelId = job.replyTarget.channelId;
    const late = data.mode === 'interaction' && !webhook;
    const first = part === 0;
    const send = async (content: string, files?: RawFile[]): Promise<string> => {
      if (first && !late && data.mode === 'thread' && data.progressMessageId) {
        try {
          const edited = (await this.deps.rest.patch(
            Routes.channelMessage(channelId, data.progressMessageId),
            {
              body: { content, components: body.components ?? [], allowed_mentions: NO_PINGS },
              files,
            },
          )) as APIMessage;
          return edited.id;
        } catch (error) {
          const code = discordCode(error);
          if (code !== UNKNOWN_MESSAGE && code !== TOO_MANY_OLD_EDITS) throw error;
        }
      }
      const replyTo = late
        ? data.progressMessageId
        : data.mode === 'thread'
          ? data.replyToMessageId
          : undefined;
      try {
        const message = (await this.deps.rest.post(Routes.channelMessages(channelId), {
          body: {
            nonce: replyNonce(job.id, part),
            enforce_nonce: true,
            content: late && first ? `<@${data.userId}> ${content}`.slice(0, DISCORD_MAX_CHARS) : content,
            components: body.components ?? [],
            allowed_mentions: late && first ? { users: [data.userId] } : NO_PINGS,
            ...(first && replyTo
              ? { message_reference: { message_id: replyTo, fail_if_not_exists: false } }
              : {}),
          },
          files,
        })) as APIMessage;
        return message.id;
      } catch (error) {
        if (!webhook || !isUndeliverable(error)) throw error;
        const message = (await this.deps.rest.post(
          Routes.webhook(this.deps.applicationId, data.interactionToken!),
          {
            body: { content, components: body.components ?? [], allowed_mentions: NO_PINGS },
            files,
            auth: false,
          },
        )) as APIMessage;
        return message.id;
      }
    };
    try {
      return await send(body.content, body.files);
    } catch (error) {
      const code = discordCode(error);
      if (!body.files?.length || (code !== INVALID_FORM_BODY && code !== REQUEST_TOO_LARGE)) throw error;
      this.deps.logger.warn(
        { err: error, jobId: job.id, part },
        'Discord refused the files; sending the text',
      );
      const note = `_The images could not be attached: Discord refused them (error ${code})._`;
      const content = body.content === '\u200b' ? note : `${body.content}\n${note}`;
      return send(content.length > DISCORD_MAX_CHARS ? note : content);
    }
  }

  /** Best effort: the interaction's "thinking" response would otherwise stay when the reply went below it. */
  private async tidyOriginal(job: JobRecord, data: DiscordTargetData): Promise<void> {
    if (!data.progressMessageId) return;
    await this.deps.rest
      .patch(Routes.channelMessage(job.replyTarget.channelId, data.progressMessageId), {
        body: { content: 'Finished; the answer is below.', components: [] },
      })
      .catch((error) =>
        this.deps.logger.debug({ err: error, jobId: job.id }, 'could not tidy the old response'),
      );
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
