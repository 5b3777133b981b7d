import type { webApi } from '@slack/bolt';
import type { JobProgress } from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import type { HeldClaim } from '../../queue/delivery.ts';
import type { JobRecord, Store } from '../../store/types.ts';
import type { DeliveryReceipt, PlatformAdapter } from '../core/adapter.ts';
import { PROGRESS_BUTTONS } from '../core/buttons.ts';
import type { Eta } from '../core/eta.ts';
import { type RenderStyle, renderEta, renderProgress, renderReply, SLACK_MAX_CHARS } from '../core/render.ts';
import { partBlocks } from './blocks.ts';
import { cannotPostThere, explainSlackError, slackErrorCode, UNDELIVERABLE } from './errors.ts';
import { escapeText, slackLink } from './text.ts';
import type { SlackMessage } from './threads.ts';

/**
 * Sends replies and progress to Slack with the bot token, from what the job's reply target holds, so it
 * works after a restart. The progress message posted when a job is accepted becomes the reply's first
 * part (chat.update); further parts and the images (files.uploadV2: getUploadURLExternal, upload,
 * completeUploadExternal) go to the same thread. Each step is recorded with the job, so a delivery
 * retried after a crash continues where it stopped instead of posting twice.
 *
 * chat.postMessage has no idempotency key, so every reply part carries message metadata naming its job
 * and part (REPLY_EVENT), and every uploaded file's name starts with the job id (its title stays the
 * plain file name). When the delivery loop says an earlier attempt died before marking the job
 * delivered, a part or the files may be posted though not recorded: the thread (conversations.replies)
 * or channel (conversations.history) is read, every page, with include_all_metadata, and what is found is
 * not posted again. That read is paid only on such a re-delivery.
 */

type WebClient = webApi.WebClient;

/** What a Slack reply target keeps in its `data`. */
export interface SlackTargetData {
  userId: string;
  /** The message showing progress, edited into the reply's first part. */
  progressTs?: string;
  /** A line above the reply saying who asked what (slash commands and buttons, which have no thread context). */
  header?: string;
  /** A slash command's response_url: ephemeral notes to the person who asked. */
  responseUrl?: string;
  /** Reply parts posted so far and their message ts (a retried delivery skips them). */
  sentParts?: number;
  messageTs?: string[];
  filesUploaded?: boolean;
}

/** What a re-delivery finds already posted: reply parts (part index → ts) and whether the files are there. */
interface Posted {
  parts: Map<number, string>;
  files: boolean;
}

export const SLACK_STYLE: RenderStyle = { maxChars: SLACK_MAX_CHARS, link: slackLink };

/** The event_type of the metadata on every reply part; event_payload is `{ job_id, part }`. */
export const REPLY_EVENT = 'gill_reply';

/** How far back a re-delivery looks in a channel (not a thread) for parts already posted, before the job began. */
const LOOKBACK_MARGIN_S = 60;

function replyMetadata(jobId: string, part: number) {
  return { event_type: REPLY_EVENT, event_payload: { job_id: jobId, part } };
}

export function targetData(job: JobRecord): SlackTargetData {
  return job.replyTarget.data as unknown as SlackTargetData;
}

/** The job with every model- or user-written text escaped, so render's output can't ping or link. */
function escaped(job: JobRecord): JobRecord {
  const notes = Array.isArray(job.replyTarget.data.notes) ? (job.replyTarget.data.notes as unknown[]) : [];
  return {
    ...job,
    replyTarget: {
      ...job.replyTarget,
      data: { ...job.replyTarget.data, notes: notes.map((n) => escapeText(String(n))) },
    },
    result: job.result
      ? { ...job.result, text: escapeText(job.result.text), notes: job.result.notes.map(escapeText) }
      : null,
    error: job.error ? { ...job.error, message: escapeText(job.error.message) } : null,
  };
}

export interface SlackAdapterDeps {
  client: WebClient;
  store: Store;
  logger: Logger;
  /** Called with every message the bot posts, so thread context includes its own answers. */
  onPosted?(channel: string, message: SlackMessage): void;
}

export class SlackAdapter implements PlatformAdapter {
  readonly platform = 'slack' as const;

  constructor(private readonly deps: SlackAdapterDeps) {}

  /** Posts the progress message of an accepted job and records it, so the reply replaces it. */
  async announce(job: JobRecord, progress: JobProgress): Promise<void> {
    const target = job.replyTarget;
    const text = renderProgress(progress);
    const answer = await this.deps.client.chat.postMessage({
      channel: target.channelId,
      ...(target.threadId ? { thread_ts: target.threadId } : {}),
      text,
      blocks: partBlocks(text, targetData(job).header, PROGRESS_BUTTONS, job.id),
      unfurl_links: false,
      unfurl_media: false,
    });
    await this.remember(job, { progressTs: String(answer.ts) });
  }

  unannounceable(error: unknown): { code: string; message: string } | null {
    return cannotPostThere(error);
  }

  async showProgress(job: JobRecord, progress: JobProgress, eta?: Eta | null): Promise<void> {
    const data = targetData(job);
    if (!data.progressTs || job.deliveredAt) return;
    const text = renderProgress(progress, eta ? renderEta(eta, 'slack') : undefined);
    await this.deps.client.chat.update({
      channel: job.replyTarget.channelId,
      ts: data.progressTs,
      text,
      blocks: partBlocks(text, data.header, PROGRESS_BUTTONS, job.id),
    });
  }

  async showCancelled(job: JobRecord, text: string): Promise<void> {
    const data = targetData(job);
    if (!data.progressTs || job.deliveredAt) return;
    try {
      await this.deps.client.chat.update({
        channel: job.replyTarget.channelId,
        ts: data.progressTs,
        text,
        blocks: partBlocks(text, data.header, [], job.id),
      });
    } catch (error) {
      // Someone deleted the progress message: there is nothing left to update.
      if (slackErrorCode(error) !== 'message_not_found') throw error;
    }
  }

  async deliver(job: JobRecord, claim?: HeldClaim): Promise<DeliveryReceipt> {
    const log = this.deps.logger.child({ jobId: job.id, channelId: job.replyTarget.channelId });
    try {
      return await this.send(job, claim);
    } catch (error) {
      const code = slackErrorCode(error);
      if (!code || !UNDELIVERABLE.has(code)) throw error;
      log.error({ code }, 'reply cannot be delivered: the bot may not post in this channel');
      await this.tellAsker(targetData(job), explainSlackError(code));
      return { undeliverable: code };
    }
  }

  /** One text-only message saying the reply could not be posted: in the thread, or to the asker alone. */
  async giveUp(job: JobRecord, text: string): Promise<DeliveryReceipt> {
    try {
      const posted = await this.deps.client.chat.postMessage({
        channel: job.replyTarget.channelId,
        ...(job.replyTarget.threadId ? { thread_ts: job.replyTarget.threadId } : {}),
        text: `<@${targetData(job).userId}> ${text}`,
      });
      return { gaveUp: true, messageTs: [String(posted.ts)] };
    } catch (error) {
      this.deps.logger.warn({ err: error, jobId: job.id }, 'could not post the failure notice');
      await this.tellAsker(targetData(job), text);
      return { gaveUp: true };
    }
  }

  private async send(job: JobRecord, claim: HeldClaim | undefined): Promise<DeliveryReceipt> {
    const { client, store } = this.deps;
    const data = targetData(job);
    const channel = job.replyTarget.channelId;
    const threadTs = job.replyTarget.threadId;
    const reply = renderReply(escaped(job), SLACK_STYLE);
    const messageTs = [...(data.messageTs ?? [])];
    const from = data.sentParts ?? 0;
    const filesDue = !data.filesUploaded && reply.images.length > 0;
    const found: Posted =
      claim?.redelivery && (from < reply.chunks.length || filesDue)
        ? await this.alreadyPosted(job)
        : { parts: new Map(), files: false };

    for (let i = from; i < reply.chunks.length; i++) {
      const text = reply.chunks[i]!;
      const last = i === reply.chunks.length - 1;
      const blocks = partBlocks(text, i === 0 ? data.header : undefined, last ? reply.buttons : [], job.id);
      const metadata = replyMetadata(job.id, i);
      let ts: string | undefined = found.parts.get(i);
      if (ts) this.deps.logger.info({ jobId: job.id, part: i, ts }, 'reply part already posted; not again');
      else await claim?.confirm();
      if (!ts && i === 0 && data.progressTs) {
        try {
          await client.chat.update({ channel, ts: data.progressTs, text, blocks, metadata });
          ts = data.progressTs;
        } catch (error) {
          // Someone deleted the progress message: the reply is posted as a new one.
          if (slackErrorCode(error) !== 'message_not_found') throw error;
        }
      }
      if (!ts) {
        const posted = await client.chat.postMessage({
          channel,
          ...(threadTs ? { thread_ts: threadTs } : {}),
          text,
          blocks,
          metadata,
          unfurl_links: false,
          unfurl_media: false,
        });
        ts = String(posted.ts);
      }
      messageTs.push(ts);
      this.deps.onPosted?.(channel, {
        ts,
        ...(threadTs ? { threadTs } : {}),
        userId: '',
        fromBot: true,
        text,
        files: [],
      });
      await this.remember(job, { sentParts: i + 1, messageTs });
    }

    let files = 0;
    if (filesDue && found.files) {
      this.deps.logger.info({ jobId: job.id }, 'reply files already shared; not again');
    } else if (filesDue) {
      const uploads: { file: Buffer; filename: string; title: string }[] = [];
      for (const image of reply.images) {
        const blob = await store.blobs.get(image.hash);
        if (blob)
          uploads.push({
            file: Buffer.from(blob.bytes),
            filename: `${job.id}-${image.fileName}`,
            title: image.fileName,
          });
        else this.deps.logger.warn({ jobId: job.id, hash: image.hash }, 'result image is no longer stored');
      }
      if (uploads.length) {
        await claim?.confirm();
        await client.files.uploadV2({
          channel_id: channel,
          ...(threadTs ? { thread_ts: threadTs } : {}),
          file_uploads: uploads,
        });
        files = uploads.length;
      }
    }
    if (filesDue) await this.remember(job, { filesUploaded: true });
    return { messageTs, files };
  }

  /**
   * What of this job's reply is already in its thread, or in its channel since shortly before the job was
   * created: parts by their metadata, files by their name. Every page is read (Slack may answer fewer
   * messages than asked for and a cursor for the rest).
   */
  private async alreadyPosted(job: JobRecord): Promise<Posted> {
    const { client } = this.deps;
    const channel = job.replyTarget.channelId;
    const threadTs = job.replyTarget.threadId;
    const posted: Posted = { parts: new Map(), files: false };
    let cursor: string | undefined;
    do {
      const page = threadTs
        ? await client.conversations.replies({
            channel,
            ts: threadTs,
            limit: 1000,
            include_all_metadata: true,
            ...(cursor ? { cursor } : {}),
          })
        : await client.conversations.history({
            channel,
            oldest: String(Math.floor(job.createdAt.getTime() / 1000) - LOOKBACK_MARGIN_S),
            limit: 999,
            include_all_metadata: true,
            ...(cursor ? { cursor } : {}),
          });
      for (const message of page.messages ?? []) {
        const metadata = message.metadata;
        const payload = metadata?.event_payload as { job_id?: unknown; part?: unknown } | undefined;
        if (metadata?.event_type === REPLY_EVENT && payload?.job_id === job.id) {
          if (typeof payload.part === 'number' && message.ts && !posted.parts.has(payload.part))
            posted.parts.set(payload.part, message.ts);
        }
        if (message.files?.some((file) => file.name?.startsWith(`${job.id}-`))) posted.files = true;
      }
      cursor = page.response_metadata?.next_cursor || undefined;
    } while (cursor);
    return posted;
  }

  /** An ephemeral note to the person who asked, when the command's response_url is known. */
  private async tellAsker(data: SlackTargetData, text: string): Promise<void> {
    if (!data.responseUrl) return;
    try {
      await fetch(data.responseUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ response_type: 'ephemeral', replace_original: false, text }),
      });
    } catch (error) {
      this.deps.logger.warn({ err: error }, 'could not reach the response_url');
    }
  }

  private async remember(job: JobRecord, patch: Partial<SlackTargetData>): Promise<void> {
    Object.assign(job.replyTarget.data, patch);
    await this.deps.store.jobs.updateReplyTarget(job.id, job.replyTarget.data);
  }
}
