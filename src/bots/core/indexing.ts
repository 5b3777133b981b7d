import { type CommunityRef, parsePayload } from '../../jobs.ts';
import type { IndexOutcome, SubmitOutcome } from './bot-core.ts';
import type { CoreDeps } from './deps.ts';
import { FetchRefusedError } from './fetch-guard.ts';
import { looksLikeImage } from './images.ts';
import type { InboundTurn, PostedImages } from './turn.ts';

/**
 * The community image index from the bots' side: images posted in indexed channels are stored and get an
 * index job each (delivered silently); deleted messages and `forget` take them out again.
 */

/** Whether posted images in the channel are indexed (lets adapters skip work for other channels). */
export async function isIndexedChannel(
  deps: CoreDeps,
  ref: CommunityRef,
  channelId: string,
): Promise<boolean> {
  const community = await deps.store.communities.ensure(ref);
  return (await deps.store.communities.getConfig(community.id)).indexedChannels.includes(channelId);
}

export async function indexImages(deps: CoreDeps, post: PostedImages): Promise<IndexOutcome | null> {
  const { store, queue, logger } = deps;
  const community = await store.communities.ensure(post.community);
  const config = await store.communities.getConfig(community.id);
  const covering = [post.channelId, ...(post.parentChannelId ? [post.parentChannelId] : [])];
  if (!covering.some((id) => config.indexedChannels.includes(id))) return null;
  const outcome: IndexOutcome = { imageIds: [], refused: [] };
  for (const attachment of post.attachments.filter(looksLikeImage)) {
    try {
      const stored = await deps.images.ingest(attachment);
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
}

/** Removes a deleted message's images from the index; returns how many. */
export async function removeMessage(
  deps: CoreDeps,
  ref: CommunityRef,
  channelId: string,
  messageId: string,
): Promise<number> {
  const community = await deps.store.communities.ensure(ref);
  const removed = await deps.store.images.deleteByMessage(community.id, channelId, messageId);
  if (removed)
    deps.logger.info(
      { community: ref, channelId, messageId, removed },
      'deleted message removed from the index',
    );
  return removed;
}

/** `forget`: removes the asker's own images from the community index (anyone may). */
export async function forgetImages(
  deps: CoreDeps,
  turn: InboundTurn,
  communityId: string,
): Promise<SubmitOutcome> {
  const removed = await deps.store.images.deleteByAuthor(communityId, turn.user.id);
  deps.logger.info({ community: turn.community, user: turn.user.id, removed }, 'forget');
  return {
    status: 'answered',
    text: removed
      ? `Removed ${removed} of your image${removed === 1 ? '' : 's'} from this community's index.`
      : 'None of your images are in this community’s index.',
  };
}
