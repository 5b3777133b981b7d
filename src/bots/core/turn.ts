import type { CommunityRef, ReplyTarget } from '../../jobs.ts';
import type { ViewerScope, Visibility } from '../../store/types.ts';

/**
 * The platform-neutral Turn: everything an adapter learned from one event (a mention, a thread message,
 * a slash command, a button), in the shape the core needs to answer it. Adapters build Turns; the core
 * (bot-core.ts) turns them into jobs or immediate answers. Nothing here knows about any platform.
 */

export type Platform = CommunityRef['platform'];

export interface TurnUser {
  /** The platform's user id (Discord user id, Slack user id). */
  id: string;
  displayName: string;
  /** Whether the platform says this user may change the community's configuration. */
  isAdmin: boolean;
}

/** A file attached to a message, as the platform describes it. The bytes are fetched by the core. */
export interface Attachment {
  /** Stable id of the file on the platform, used to cache its content hash; the URL may change. */
  id?: string;
  /** Full URL including any signed query string (Discord CDN links answer 404 without it). */
  url: string;
  name: string;
  /** Size in bytes as the platform reports it, checked before downloading. */
  size?: number;
  contentType?: string;
}

/** One message of the conversation the turn belongs to, oldest first in InboundTurn.messages. */
export interface ThreadMessage {
  id: string;
  /** 'assistant' for the bot's own messages. */
  role: 'user' | 'assistant';
  authorId: string;
  authorName: string;
  /** Text with the bot's own mention removed. */
  text: string;
  attachments: Attachment[];
}

export type ConfigChange =
  | { setting: 'show' }
  /** purge: when turning indexing off, also remove the images already indexed from the channel. */
  | { setting: 'indexing'; channelId: string; enabled: boolean; purge?: boolean }
  | { setting: 'generation'; enabled: boolean }
  | { setting: 'retrieval'; enabled: boolean }
  | { setting: 'bias'; value: number }
  | { setting: 'context'; messages: number }
  | {
      setting: 'limits';
      userJobsPerMinute?: number;
      userConcurrentJobs?: number;
      communityConcurrentJobs?: number;
    };

/** Actions behind the buttons under a reply (see buttons.ts for their custom ids). */
export type ButtonAction = 'regenerate' | 'retrieve' | 'generate' | 'more';

/** What the user asked for. */
export type Command =
  /** Answer the conversation in `messages` (mention, thread follow-up). */
  | { kind: 'chat' }
  | { kind: 'imagine'; prompt: string; seed?: number; steps?: number }
  | { kind: 'find'; query: string; k?: number }
  /** An admin-only change (or display) of the community configuration. */
  | { kind: 'config'; change: ConfigChange }
  /** Remove the user's own images from the community index and stop indexing theirs (any user). */
  | { kind: 'forget' }
  /** Opt back in to (or out of) having one's posted images indexed (any user). */
  | { kind: 'index-me'; enabled: boolean }
  | { kind: 'button'; action: ButtonAction; jobId: string };

export interface InboundTurn {
  platform: Platform;
  /** The server or workspace; its externalId is the Discord guild id or Slack team id. */
  community: CommunityRef;
  user: TurnUser;
  channelId: string;
  threadId?: string;
  /**
   * Where the asker is, in the store's terms (a thread's parent channel and the thread): retrieval for
   * this turn shows public images and the private ones of this place only. Absent: public images only.
   */
  scope?: ViewerScope;
  command: Command;
  /**
   * The conversation, oldest first, ending with the message being answered. Used by 'chat' (and to
   * find the images of the thread); may be empty for slash commands and buttons.
   */
  messages: ThreadMessage[];
  /**
   * Unique per platform event (Discord message or interaction id, Slack event_id): a second submit with
   * the same key returns the first job instead of creating another.
   */
  idempotencyKey: string;
  /** Where the reply goes; stored with the job, so delivery works after a restart. */
  replyTarget: ReplyTarget;
}

/** What an adapter reads from its event; the platform and the reply target follow from it (see buildTurn). */
export type TurnFields = Omit<InboundTurn, 'platform' | 'replyTarget'>;

/**
 * A Turn whose reply goes back where it came from (its channel, and thread if any), with the platform's
 * own `data` for finding it again (message ids, an interaction token...). Each platform's inbound.ts wraps
 * this in its one turn builder.
 */
export function buildTurn(platform: Platform, fields: TurnFields, data: object): InboundTurn {
  const { channelId, threadId } = fields;
  return {
    platform,
    ...fields,
    replyTarget: { platform, channelId, ...(threadId ? { threadId } : {}), data: { ...data } },
  };
}

/**
 * Images posted in a channel or in a thread, offered for the community index (the core's indexImages
 * decides if they are taken: when indexing is on for the channel, or for the channel the thread is in).
 */
export interface PostedImages {
  community: CommunityRef;
  /** Where the message is (a Discord thread has its own channel id). */
  channelId: string;
  /**
   * The channel a thread belongs to, when the message is in a thread with its own channel id: the image
   * is then stored under this channel with channelId as its thread.
   */
  parentChannelId?: string;
  messageId: string;
  authorId: string;
  /** Link to the message, shown with retrieved results. */
  permalink: string | null;
  /**
   * Who can see the message: 'private' for a private channel or thread (retrievable only there), 'public'
   * when everyone in the community can. Adapters never offer direct messages.
   */
  visibility: Visibility;
  attachments: Attachment[];
}

/** Who asked, as the store counts unfinished jobs per user (createOrGet's authorKey). */
export function authorKey(platform: Platform, userId: string): string {
  return `${platform}:${userId}`;
}
