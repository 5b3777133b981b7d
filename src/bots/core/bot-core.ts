import type { CommunityRef } from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import type { GillMetrics } from '../../metrics/metrics.ts';
import type { JobQueue } from '../../queue/queue.ts';
import type { JobRecord, Store } from '../../store/types.ts';
import { cancelRequest } from './cancel.ts';
import { answerConfig } from './config-commands.ts';
import { type ContextBudget, DEFAULT_CONTEXT_BUDGET } from './context.ts';
import type { CoreDeps } from './deps.ts';
import { type Reaction, reactToReply } from './feedback.ts';
import type { ImageIngest } from './images.ts';
import {
  forgetImages,
  indexImages,
  isIndexedChannel,
  removeAttachment,
  removeChannel,
  removeDroppedAttachments,
  removeMessage,
  setIndexMe,
} from './indexing.ts';
import { type IndexingLimits, indexingLimits } from './limits.ts';
import { RefusalMemory, startJob } from './submission.ts';
import type { InboundTurn, PostedImages } from './turn.ts';

/**
 * The platform-neutral bot: a Turn in, a job (or an immediate answer, or a refusal with its reason) out.
 * Adapters call submit() for every mention, thread message, command and button, and indexImages() /
 * removeMessage() for posted and deleted messages; replies come back through the delivery loop. Each
 * concern is a module of its own: submission.ts (jobs), config-commands.ts, cancel.ts, indexing.ts.
 */

export type RefusalReason = 'bad_input' | 'not_admin' | 'disabled' | 'limited' | 'not_found';

export type SubmitOutcome =
  /** A job was started for the turn; `position` is the number of jobs ahead (null when not waiting). */
  | { status: 'accepted'; jobId: string; position: number | null }
  /**
   * The event was seen before (a platform retry or redelivery) and was answered or is being answered:
   * the adapter must not answer it again. jobId is null when the first one was refused.
   */
  | { status: 'duplicate'; jobId: string | null }
  /** Done at once (configuration, forget); the text is the answer. */
  | { status: 'answered'; text: string }
  /** Nothing was started; the message says why, for the user. */
  | { status: 'refused'; reason: RefusalReason; message: string };

export interface IndexOutcome {
  /** Ids of the image rows added (or found) for the message; each gets an index job. */
  imageIds: string[];
  /** Messages for attachments that were not taken (not an image, too large, corrupt, foreign host). */
  refused: string[];
}

/** Someone pressed Cancel on a job's progress message. */
export interface CancelRequest {
  community: CommunityRef;
  jobId: string;
  user: { id: string; displayName: string };
  /** Whether the user administers the community; only asked when they are not the one who asked. */
  isAdmin(): boolean | Promise<boolean>;
}

export type CancelOutcome =
  /**
   * The job was cancelled: nothing will be delivered for it. The adapter replaces its progress message
   * with `progressText` (no buttons) and may tell the person who pressed Cancel `answer`.
   */
  | { status: 'cancelled'; job: JobRecord; progressText: string; answer: string }
  /** Nothing changed; the message (for the person who pressed, only) says why. */
  | { status: 'refused'; reason: 'not_allowed' | 'finished' | 'not_found'; message: string };

export interface BotCore {
  submit(turn: InboundTurn): Promise<SubmitOutcome>;
  /**
   * Cancels a waiting or running job for the person who asked for it (or an admin of the community):
   * a waiting job leaves the queue, a running one is aborted, and no reply is delivered for it.
   */
  cancel(request: CancelRequest): Promise<CancelOutcome>;
  /**
   * Indexes the images of a posted message if indexing is on for its channel, or for the channel its
   * thread belongs to; null when it is not.
   */
  indexImages(post: PostedImages): Promise<IndexOutcome | null>;
  /**
   * Removes a deleted message's images from the index (also one still downloading: it is stored
   * deleted); returns how many.
   */
  removeMessage(community: CommunityRef, channelId: string, messageId: string): Promise<number>;
  /** Removes the images of a deleted channel or thread. */
  removeChannel(community: CommunityRef, channelId: string): Promise<number>;
  /** Removes the images of one deleted file (Discord attachment id, Slack file id). */
  removeAttachment(community: CommunityRef, attachmentId: string): Promise<number>;
  /** After an edit, removes the message's images whose files it no longer has. */
  removeDroppedAttachments(
    community: CommunityRef,
    edit: { channelId: string; messageId: string; keptAttachmentIds: string[] },
  ): Promise<number>;
  /** Whether posted images in the channel are indexed (lets adapters skip work for other channels). */
  isIndexedChannel(community: CommunityRef, channelId: string): Promise<boolean>;
  /**
   * A 👍/👎 added to (or removed from) one of the bot's replies: feedback on its retrieve/generate
   * decision (see feedback.ts). Returns whether it was taken (false for replies without a decision).
   */
  react(request: ReactionRequest): Promise<boolean>;
}

export interface ReactionRequest {
  community: CommunityRef;
  /** The reply reacted to: its job when the message names it (Discord's buttons), else the message's id. */
  reply: { jobId: string } | { messageId: string };
  userId: string;
  reaction: Reaction;
  /** False when the reaction was removed. */
  added: boolean;
}

export interface BotCoreOptions {
  store: Store;
  queue: JobQueue;
  logger: Logger;
  images: ImageIngest;
  /** Indexing's own cap and per-person rate (indexingLimits of the configuration); defaults when left out. */
  indexing?: IndexingLimits;
  /** Token and image budget of a chat context; the message count comes from the community config. */
  contextBudget?: Partial<Omit<ContextBudget, 'maxMessages'>>;
  /** How a channel id is written in the platform's markup, for configuration answers. */
  channelMention?: (channelId: string) => string;
  /** How a user is named in the platform's markup (Discord and Slack `<@id>`), for Cancel answers. */
  userMention?: (userId: string, displayName: string | undefined) => string;
  /** Counts rate-limit refusals when given. */
  metrics?: GillMetrics;
}

export function createBotCore(options: BotCoreOptions): BotCore {
  const deps: CoreDeps = {
    store: options.store,
    queue: options.queue,
    logger: options.logger,
    images: options.images,
    indexing: options.indexing ?? indexingLimits({}),
    budget: { ...DEFAULT_CONTEXT_BUDGET, ...options.contextBudget },
    channelMention: options.channelMention ?? ((id) => `#${id}`),
    userMention: options.userMention ?? ((_id, name) => name || 'the person who asked'),
    metrics: options.metrics,
  };
  const refused = new RefusalMemory();
  return {
    async submit(turn) {
      const community = await deps.store.communities.ensure(turn.community);
      const config = await deps.store.communities.getConfig(community.id);
      const command = turn.command;
      if (command.kind === 'forget') return forgetImages(deps, turn, community.id);
      if (command.kind === 'index-me') return setIndexMe(deps, turn, community.id, command.enabled);
      if (command.kind === 'config') return answerConfig(deps, turn, command.change, community, config);
      return startJob(deps, refused, turn, community, config);
    },
    cancel: (request) => cancelRequest(deps, request),
    indexImages: (post) => indexImages(deps, post),
    removeMessage: (ref, channelId, messageId) => removeMessage(deps, ref, channelId, messageId),
    removeChannel: (ref, channelId) => removeChannel(deps, ref, channelId),
    removeAttachment: (ref, attachmentId) => removeAttachment(deps, ref, attachmentId),
    removeDroppedAttachments: (ref, edit) => removeDroppedAttachments(deps, ref, edit),
    isIndexedChannel: (ref, channelId) => isIndexedChannel(deps, ref, channelId),
    react: (request) => reactToReply(deps, request),
  };
}
