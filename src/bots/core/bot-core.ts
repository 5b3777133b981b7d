import { randomInt } from 'node:crypto';
import {
  type CommunityRef,
  type JobPayload,
  type JobPayloadInput,
  parsePayload,
  type ReplyTarget,
  UserInputError,
} from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import type { JobQueue } from '../../queue/queue.ts';
import { cancelJob } from '../../queue/submit.ts';
import type { Community, CommunityConfig, JobRecord, Store } from '../../store/types.ts';
import { payloadForButton } from './buttons.ts';
import { configPatch, describeConfig, gillHelp, validateConfigChange } from './commands.ts';
import { buildContext, type ContextBudget, DEFAULT_CONTEXT_BUDGET } from './context.ts';
import { anchorFor, contextSeed, conversationOf } from './conversation.ts';
import { communityBias, describeFeedback, directionOf, type Reaction, recordFeedback } from './feedback.ts';
import { FetchRefusedError } from './fetch-guard.ts';
import { type ImageIngest, looksLikeImage } from './images.ts';
import { checkLimits } from './limits.ts';
import { renderCancelled } from './render.ts';
import { authorKey, type InboundTurn, type PostedImages } from './turn.ts';

/**
 * The platform-neutral bot: a Turn in, a job (or an immediate answer, or a refusal with its reason) out.
 * Adapters call submit() for every mention, thread message, command and button, and indexImages() /
 * removeMessage() for posted and deleted messages; replies come back through the delivery loop.
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
  /** Removes a deleted message's images from the index; returns how many. */
  removeMessage(community: CommunityRef, channelId: string, messageId: string): Promise<number>;
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
  jobId: string;
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
  /** Token and image budget of a chat context; the message count comes from the community config. */
  contextBudget?: Partial<Omit<ContextBudget, 'maxMessages'>>;
  /** How a channel id is written in the platform's markup, for configuration answers. */
  channelMention?: (channelId: string) => string;
  /** How a user is named in the platform's markup (Discord and Slack `<@id>`), for Cancel answers. */
  userMention?: (userId: string, displayName: string | undefined) => string;
}

/** Refusal keys remembered so a duplicate of a refused event is not answered twice. */
const REMEMBERED_REFUSALS = 5000;

export function createBotCore(options: BotCoreOptions): BotCore {
  const { store, queue, logger } = options;
  const budget = { ...DEFAULT_CONTEXT_BUDGET, ...options.contextBudget };
  const channelMention = options.channelMention ?? ((id: string) => `#${id}`);
  const userMention =
    options.userMention ?? ((_id: string, name: string | undefined) => name || 'the person who asked');
  const refusedKeys = new Set<string>();

  function remember(key: string) {
    refusedKeys.add(key);
    if (refusedKeys.size > REMEMBERED_REFUSALS)
      refusedKeys.delete(refusedKeys.values().next().value as string);
  }

  async function payloadFor(
    turn: InboundTurn,
    community: Community,
    config: CommunityConfig,
    notes: string[],
  ): Promise<JobPayloadInput> {
    const ref = turn.community;
    const command = turn.command;
    switch (command.kind) {
      case 'chat': {
        const built = await buildContext(await conversationOf(store, community.id, turn), {
          images: options.images,
          budget: { ...budget, maxMessages: config.contextMessages },
          onRefused: (error, message) =>
            logger.info(
              { reason: error.reason, messageId: message.id, channelId: turn.channelId, community: ref },
              'attachment refused',
            ),
        });
        notes.push(...built.notes);
        return {
          kind: 'chat',
          community: ref,
          context: built.items,
          seed: contextSeed(built.items),
          retrieveBias: (await communityBias(store, community.id, config)).total,
          allowGeneration: config.generationEnabled,
          allowRetrieval: config.retrievalEnabled,
        };
      }
      case 'imagine':
        return {
          kind: 'imagine',
          community: ref,
          prompt: command.prompt,
          seed: command.seed,
          steps: command.steps,
        };
      case 'find':
        return { kind: 'find', community: ref, query: command.query, k: command.k };
      case 'button': {
        const original = await store.jobs.get(command.jobId);
        if (!original || original.communityId !== community.id) {
          throw new UserInputError(
            'That reply is no longer known, so its buttons no longer work.',
            'not_found',
          );
        }
        return payloadForButton(original, command.action, randomInt(2 ** 31 - 1));
      }
      default:
        throw new Error(`not a job command: ${command.kind}`);
    }
  }

  function disabledReason(payload: JobPayload, config: CommunityConfig): string | null {
    const wantsGeneration =
      payload.kind === 'imagine' || (payload.kind === 'chat' && payload.imageMode === 'generate');
    const wantsRetrieval =
      payload.kind === 'find' || (payload.kind === 'chat' && payload.imageMode === 'retrieve');
    if (wantsGeneration && !config.generationEnabled)
      return 'Image generation is turned off in this community.';
    if (wantsRetrieval && !config.retrievalEnabled) return 'Image retrieval is turned off in this community.';
    return null;
  }

  async function startJob(
    turn: InboundTurn,
    community: Community,
    config: CommunityConfig,
  ): Promise<SubmitOutcome> {
    const log = logger.child({ key: turn.idempotencyKey, platform: turn.platform, user: turn.user.id });
    if (refusedKeys.has(turn.idempotencyKey)) {
      return { status: 'duplicate', jobId: null };
    }
    const refuse = (reason: RefusalReason, message: string): SubmitOutcome => {
      remember(turn.idempotencyKey);
      log.info({ reason, message }, 'request refused');
      return { status: 'refused', reason, message };
    };
    const notes: string[] = [];
    let payload: JobPayload;
    try {
      payload = parsePayload(await payloadFor(turn, community, config, notes));
    } catch (error) {
      if (error instanceof UserInputError) {
        return refuse(error.code === 'not_found' ? 'not_found' : 'bad_input', error.message);
      }
      throw error;
    }
    const disabled = disabledReason(payload, config);
    if (disabled) return refuse('disabled', disabled);

    const key = authorKey(turn.platform, turn.user.id);
    const replyTarget: ReplyTarget = {
      ...turn.replyTarget,
      // askedBy names the asker in Cancel answers on platforms without user mentions (the playground).
      data: {
        ...turn.replyTarget.data,
        notes,
        askedBy: turn.user.displayName,
        conversation: await anchorFor(store, turn),
      },
    };
    const { job, created } = await store.jobs.createOrGet({
      idempotencyKey: turn.idempotencyKey,
      communityId: community.id,
      authorKey: key,
      payload,
      replyTarget,
    });
    if (!created) {
      log.info({ jobId: job.id, status: job.status }, 'duplicate event; job already exists');
      // An add that failed the first time (queue down) is retried; one already queued is left as it is.
      if (job.status === 'queued') await queue.add({ id: job.id, payload: job.payload });
      return { status: 'duplicate', jobId: job.id };
    }
    // The new job is already in the store: the caps count the jobs before it. A refused job is cancelled,
    // which keeps a later duplicate of the same event from being answered again.
    const limited = await checkLimits({
      store,
      communityId: community.id,
      authorKey: key,
      config,
      recordedSelf: 1,
    });
    if (limited) {
      await store.jobs.cancel(job.id);
      return refuse('limited', limited);
    }
    if (turn.command.kind === 'button') await learnFromButton(turn, key);
    await queue.add({ id: job.id, payload });
    const position = await queue.position(job.id);
    log.info({ jobId: job.id, kind: payload.kind, position }, 'job accepted');
    return { status: 'accepted', jobId: job.id, position };
  }

  /** "Retrieve instead" / "Generate instead" on a chat reply says which the person wanted. */
  async function learnFromButton(turn: InboundTurn, authorKey: string): Promise<void> {
    const command = turn.command;
    if (command.kind !== 'button' || (command.action !== 'retrieve' && command.action !== 'generate')) return;
    const original = await store.jobs.get(command.jobId);
    if (original)
      await recordFeedback(store, { job: original, authorKey, source: 'button', signal: command.action });
  }

  /** The person who asked for a job, in the platform's markup. */
  function askerOf(job: JobRecord): string {
    const key = job.authorKey ?? '';
    const userId = key.includes(':')
      ? key.slice(key.indexOf(':') + 1)
      : String(job.replyTarget.data.userId ?? '');
    const name = job.replyTarget.data.askedBy;
    return userMention(userId, typeof name === 'string' ? name : undefined);
  }

  function alreadyDone(job: JobRecord): CancelOutcome {
    return {
      status: 'refused',
      reason: 'finished',
      message:
        job.status === 'cancelled'
          ? 'This request was already cancelled.'
          : 'This request has already finished, so there is nothing to cancel.',
    };
  }

  return {
    async cancel(request) {
      const log = logger.child({
        jobId: request.jobId,
        platform: request.community.platform,
        user: request.user.id,
      });
      const community = await store.communities.ensure(request.community);
      const job = await store.jobs.get(request.jobId);
      if (!job || job.communityId !== community.id || job.kind === 'index') {
        return { status: 'refused', reason: 'not_found', message: 'That request is no longer known.' };
      }
      if (job.status !== 'queued' && job.status !== 'running') return alreadyDone(job);
      const own = job.authorKey === authorKey(request.community.platform, request.user.id);
      if (!own && !(await request.isAdmin())) {
        log.info('cancel refused: not the asker');
        return { status: 'refused', reason: 'not_allowed', message: `Only ${askerOf(job)} can cancel this.` };
      }
      const wasRunning = job.status === 'running';
      if (!(await cancelJob({ store, queue }, job.id))) {
        return alreadyDone((await store.jobs.get(job.id)) ?? job);
      }
      log.info({ byAsker: own, wasRunning }, 'job cancelled');
      const by = own ? undefined : userMention(request.user.id, request.user.displayName);
      return {
        status: 'cancelled',
        job: (await store.jobs.get(job.id)) ?? job,
        progressText: renderCancelled(by),
        answer: own ? 'Cancelled.' : `Cancelled the request of ${askerOf(job)}.`,
      };
    },

    async submit(turn) {
      const community = await store.communities.ensure(turn.community);
      const config = await store.communities.getConfig(community.id);
      const command = turn.command;
      if (command.kind === 'forget') {
        const removed = await store.images.deleteByAuthor(community.id, turn.user.id);
        logger.info({ community: turn.community, user: turn.user.id, removed }, 'forget');
        return {
          status: 'answered',
          text: removed
            ? `Removed ${removed} of your image${removed === 1 ? '' : 's'} from this community's index.`
            : 'None of your images are in this community’s index.',
        };
      }
      if (command.kind === 'config') {
        if (!turn.user.isAdmin) {
          logger.info(
            { community: turn.community, user: turn.user.id, change: command.change },
            'config refused: not admin',
          );
          return {
            status: 'refused',
            reason: 'not_admin',
            message: 'Only admins of this community can change GILL’s settings.',
          };
        }
        if (command.change.setting === 'show') {
          const learned = describeFeedback(await communityBias(store, community.id, config));
          return {
            status: 'answered',
            text: `${describeConfig(config, channelMention)}\n${learned}\n\n${gillHelp()}`,
          };
        }
        if (command.change.setting === 'feedback-reset') {
          const forgotten = await store.feedback.reset(community.id);
          logger.info({ community: turn.community, user: turn.user.id, forgotten }, 'feedback reset');
          return {
            status: 'answered',
            text: `Forgot ${forgotten} feedback event${forgotten === 1 ? '' : 's'}; the decision now gets only the bias set with \`/gill bias\` (${config.retrieveBias}).`,
          };
        }
        try {
          validateConfigChange(command.change);
        } catch (error) {
          if (error instanceof UserInputError)
            return { status: 'refused', reason: 'bad_input', message: error.message };
          throw error;
        }
        const updated = await store.communities.updateConfig(
          community.id,
          configPatch(config, command.change),
        );
        logger.info(
          { community: turn.community, user: turn.user.id, change: command.change },
          'config changed',
        );
        return { status: 'answered', text: `Settings updated.\n${describeConfig(updated, channelMention)}` };
      }
      return startJob(turn, community, config);
    },

    async indexImages(post) {
      const community = await store.communities.ensure(post.community);
      const config = await store.communities.getConfig(community.id);
      const covering = [post.channelId, ...(post.parentChannelId ? [post.parentChannelId] : [])];
      if (!covering.some((id) => config.indexedChannels.includes(id))) return null;
      const outcome: IndexOutcome = { imageIds: [], refused: [] };
      for (const attachment of post.attachments.filter(looksLikeImage)) {
        try {
          const stored = await options.images.ingest(attachment);
          const image = await store.images.add(community.id, stored.hash, {
            mime: stored.mime,
            width: stored.width,
            height: stored.height,
            channelId: post.channelId,
            messageId: post.messageId,
            authorId: post.authorId,
            permalink: post.permalink,
            title: attachment.name,
          });
          const payload = parsePayload({ kind: 'index', community: post.community, imageId: image.id });
          const { job } = await store.jobs.createOrGet({
            idempotencyKey: `index:${image.id}`,
            communityId: community.id,
            payload,
            replyTarget: { platform: post.community.platform, channelId: post.channelId, data: {} },
          });
          await queue.add({ id: job.id, payload });
          outcome.imageIds.push(image.id);
        } catch (error) {
          if (!(error instanceof FetchRefusedError)) throw error;
          logger.info(
            { reason: error.reason, messageId: post.messageId, channelId: post.channelId },
            'image not indexed',
          );
          outcome.refused.push(error.message);
        }
      }
      return outcome;
    },

    async removeMessage(ref, channelId, messageId) {
      const community = await store.communities.ensure(ref);
      const removed = await store.images.deleteByMessage(community.id, channelId, messageId);
      if (removed)
        logger.info(
          { community: ref, channelId, messageId, removed },
          'deleted message removed from the index',
        );
      return removed;
    },

    async react(request) {
      const community = await store.communities.ensure(request.community);
      const job = await store.jobs.get(request.jobId);
      if (!job || job.communityId !== community.id) return false;
      const key = authorKey(request.community.platform, request.userId);
      if (request.added) {
        const taken = await recordFeedback(store, {
          job,
          authorKey: key,
          source: 'reaction',
          signal: request.reaction,
        });
        if (taken)
          logger.info(
            { community: request.community, jobId: job.id, reaction: request.reaction },
            'feedback',
          );
        return taken;
      }
      const direction = directionOf(job, request.reaction);
      return (
        direction !== null &&
        store.feedback.withdraw({ jobId: job.id, authorKey: key, source: 'reaction', direction })
      );
    },

    async isIndexedChannel(ref, channelId) {
      const community = await store.communities.ensure(ref);
      return (await store.communities.getConfig(community.id)).indexedChannels.includes(channelId);
    },
  };
}
