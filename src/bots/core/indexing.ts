import { type CommunityRef, parsePayload } from '../../jobs.ts';
import type { ImagePlacement } from '../../store/types.ts';
import type { IndexOutcome, SubmitOutcome } from './bot-core.ts';
import type { CoreDeps } from './deps.ts';
import { FetchRefusedError } from './fetch-guard.ts';
import { looksLikeImage } from './images.ts';
import { checkIndexingLimits } from './limits.ts';
import { authorKey, type InboundTurn, type PostedImages } from './turn.ts';

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

/** Where the image is recorded: a thread's images under its parent channel, with the thread. */
function placementOf(post: PostedImages): { channelId: string } & ImagePlacement {
  return post.parentChannelId
    ? { channelId: post.parentChannelId, threadId: post.channelId, visibility: post.visibility }
    : { channelId: post.channelId, threadId: null, visibility: post.visibility };
}

export async function indexImages(deps: CoreDeps, post: PostedImages): Promise<IndexOutcome | null> {
  const { store, queue, logger } = deps;
  const community = await store.communities.ensure(post.community);
  const config = await store.communities.getConfig(community.id);
  const covering = [post.channelId, ...(post.parentChannelId ? [post.parentChannelId] : [])];
  if (!covering.some((id) => config.indexedChannels.includes(id))) return null;
  const outcome: IndexOutcome = { imageIds: [], refused: [] };
  if (await store.images.optedOut(community.id, post.authorId)) {
    logger.info({ messageId: post.messageId, channelId: post.channelId }, 'poster opted out of indexing');
    return outcome;
  }
  const posterKey = authorKey(post.community.platform, post.authorId);
  for (const attachment of post.attachments.filter(looksLikeImage)) {
    const limited = await checkIndexingLimits({
      store,
      communityId: community.id,
      posterKey,
      limits: deps.indexing,
      metrics: deps.metrics,
    });
    if (limited) {
      logger.info({ messageId: post.messageId, channelId: post.channelId, limited }, 'image not indexed');
      outcome.refused.push(`"${attachment.name}": ${limited}`);
      continue;
    }
    try {
      const stored = await deps.images.ingest(attachment);
      const image = await store.images.add(community.id, stored.hash, {
        mime: stored.mime,
        width: stored.width,
        height: stored.height,
        ...placementOf(post),
        messageId: post.messageId,
        authorId: post.authorId,
        permalink: post.permalink,
        title: attachment.name,
        attachmentId: attachment.id ?? null,
      });
      // The message was deleted while its image downloaded: the row is stored deleted, and not indexed.
      if (!image.live) continue;
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

/** How a person opts back in, on every platform. */
const OPT_IN_HINT =
  'Your images posted from now on are not indexed either, until you opt back in with `/gill index-me on` (on Discord, `/gill-index-me`).';

/** `forget`: removes the asker's own images from the community index and opts them out (anyone may). */
export async function forgetImages(
  deps: CoreDeps,
  turn: InboundTurn,
  communityId: string,
): Promise<SubmitOutcome> {
  await deps.store.images.setOptedOut(communityId, turn.user.id, true);
  const removed = await deps.store.images.deleteByAuthor(communityId, turn.user.id);
  deps.logger.info({ community: turn.community, user: turn.user.id, removed }, 'forget');
  const done = removed
    ? `Removed ${removed} of your image${removed === 1 ? '' : 's'} from this community's index.`
    : 'None of your images are in this community’s index.';
  return { status: 'answered', text: `${done} ${OPT_IN_HINT}` };
}

/** `index-me on|off`: whether the asker's posted images are indexed (anyone may, for themselves). */
export async function setIndexMe(
  deps: CoreDeps,
  turn: InboundTurn,
  communityId: string,
  enabled: boolean,
): Promise<SubmitOutcome> {
  await deps.store.images.setOptedOut(communityId, turn.user.id, !enabled);
  deps.logger.info({ community: turn.community, user: turn.user.id, enabled }, 'index-me');
  return {
    status: 'answered',
    text: enabled
      ? 'Images you post in indexed channels are indexed again.'
      : 'Images you post are no longer indexed (those already indexed stay; `/gill forget` removes them).',
  };
}

/** A deleted channel or thread: its images leave the index. */
export async function removeChannel(deps: CoreDeps, ref: CommunityRef, channelId: string): Promise<number> {
  const community = await deps.store.communities.ensure(ref);
  const removed = await deps.store.images.deleteByChannel(community.id, channelId);
  if (removed)
    deps.logger.info({ community: ref, channelId, removed }, 'deleted channel removed from the index');
  return removed;
}

/** A file deleted on its own (Slack file_deleted): its images leave the index. */
export async function removeAttachment(
  deps: CoreDeps,
  ref: CommunityRef,
  attachmentId: string,
): Promise<number> {
  const community = await deps.store.communities.ensure(ref);
  const removed = await deps.store.images.deleteByAttachment(community.id, attachmentId);
  if (removed)
    deps.logger.info({ community: ref, attachmentId, removed }, 'deleted file removed from the index');
  return removed;
}

/** An edited message: the images of files it no longer has leave the index. */
export async function removeDroppedAttachments(
  deps: CoreDeps,
  ref: CommunityRef,
  edit: { channelId: string; messageId: string; keptAttachmentIds: string[] },
): Promise<number> {
  const community = await deps.store.communities.ensure(ref);
  const removed = await deps.store.images.deleteDroppedAttachments(
    community.id,
    edit.channelId,
    edit.messageId,
    edit.keptAttachmentIds,
  );
  if (removed)
    deps.logger.info({ community: ref, ...edit, removed }, 'files dropped by an edit removed from the index');
  return removed;
}
