import type { JobProgress } from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import type { JobRecord, Store } from '../../store/types.ts';
import type { DeliveryReceipt, PlatformAdapter } from '../core/adapter.ts';
import type { Eta } from '../core/eta.ts';
import { renderEta, renderProgress } from '../core/render.ts';
import type { EventHub } from './events.ts';
import type { PlaygroundMessage, PlaygroundMessages } from './messages.ts';
import { replyContent } from './reply.ts';

/**
 * The playground's side of delivery. A job's bot message starts as its progress line (posted when the job
 * is accepted) and becomes the reply; both are one row keyed by the job, so a delivery retried after a
 * crash, or one that overtakes the progress message, still leaves exactly one reply in the thread.
 */

export class PlaygroundAdapter implements PlatformAdapter {
  readonly platform = 'playground' as const;

  constructor(
    private readonly deps: {
      store: Store;
      messages: PlaygroundMessages;
      hub: EventHub;
      logger: Logger;
      /** The playground community's id, for jobs recorded without one. */
      communityId: string;
    },
  ) {}

  /** Posts the progress message of a job just accepted; nothing when its reply is already in. */
  async announce(job: JobRecord, progress: JobProgress): Promise<void> {
    const threadId = job.replyTarget.threadId;
    if (!threadId) return;
    const message = await this.deps.messages.startReply({
      communityId: this.deps.communityId,
      channelId: job.replyTarget.channelId,
      threadId,
      jobId: job.id,
      body: renderProgress(progress),
    });
    if (message) this.publish(message);
  }

  async showProgress(job: JobRecord, progress: JobProgress, eta?: Eta | null): Promise<void> {
    if (job.deliveredAt) return;
    const text = renderProgress(progress, eta ? renderEta(eta, 'plain') : undefined);
    const message = await this.deps.messages.progress(job.id, text);
    if (!message) return;
    this.deps.hub.publish({
      type: 'progress',
      jobId: job.id,
      threadId: message.threadId,
      text,
      stage: progress.stage,
      ...(progress.stage === 'generating'
        ? {
            step: progress.step,
            steps: progress.steps,
            ...(progress.previewPng ? { preview: dataUrl(progress.previewPng) } : {}),
          }
        : {}),
    });
  }

  async showCancelled(job: JobRecord, text: string): Promise<void> {
    if (job.deliveredAt) return;
    const message = await this.deps.messages.cancelReply(job.id, text);
    if (message) this.publish(message);
  }

  async deliver(job: JobRecord): Promise<DeliveryReceipt> {
    const threadId = job.replyTarget.threadId;
    if (!threadId) {
      // Only index jobs (delivered silently by the core) are made without a thread.
      this.deps.logger.warn({ jobId: job.id, kind: job.kind }, 'playground job without a thread; not shown');
      return { shown: false };
    }
    const reply = await replyContent(job, this.deps.store);
    const message = await this.deps.messages.finishReply({
      communityId: job.communityId ?? this.deps.communityId,
      channelId: job.replyTarget.channelId,
      threadId,
      jobId: job.id,
      body: reply.text,
      reply,
    });
    this.publish(message);
    return { messageId: message.id };
  }

  publish(message: PlaygroundMessage): void {
    this.deps.hub.publish({ type: 'message', message });
  }
}

/** Progress previews travel as base64 PNG; the page takes them as data: URLs. */
function dataUrl(png: string): string {
  return png.startsWith('data:') ? png : `data:image/png;base64,${png}`;
}
