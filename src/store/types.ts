import type { CommunityRef, JobKind, JobPayload, JobResult, ReplyTarget } from '../jobs.ts';
import type { SqlQuery } from './sql-client.ts';

/**
 * The store's interface. One implementation (createStore in src/store/store.ts, one repository per
 * file beside it) serves both Postgres (`pg`, with pgvector) and the embedded PGlite: only the SQL
 * connection differs.
 */

export interface Community {
  id: string;
  platform: CommunityRef['platform'];
  externalId: string;
}

/** Per-community settings, changed only by admins. */
export interface CommunityConfig {
  generationEnabled: boolean;
  retrievalEnabled: boolean;
  /** Added to the decision head's retrieve logit: > 0 favours retrieving, < 0 generating. */
  retrieveBias: number;
  /** Messages of thread context kept (oldest dropped first, with a note). */
  contextMessages: number;
  /** Jobs per user per minute, and concurrent jobs per user and per community. */
  userJobsPerMinute: number;
  userConcurrentJobs: number;
  communityConcurrentJobs: number;
  /** Channels where posted images are indexed for retrieval. */
  indexedChannels: string[];
}

export const DEFAULT_COMMUNITY_CONFIG: CommunityConfig = {
  generationEnabled: true,
  retrievalEnabled: true,
  retrieveBias: 0,
  contextMessages: 25,
  userJobsPerMinute: 6,
  userConcurrentJobs: 2,
  communityConcurrentJobs: 6,
  indexedChannels: [],
};

export interface ImageSource {
  /** The channel it was posted in; for a post in a thread, the thread's parent channel. */
  channelId: string | null;
  messageId: string | null;
  authorId: string | null;
  permalink: string | null;
  /** A human name for the image (file name, emoji name). */
  title: string | null;
}

/**
 * Who may retrieve an image (issue: retrieval respects who can see the source channel). A public image
 * is retrievable anywhere in its community; a private one only by a viewer in the same place: its
 * channel when it has no thread, else its thread. An image from a public thread of a private channel is
 * recorded with its thread and so stays inside that thread: narrower than who can see it, never wider.
 */
export type Visibility = 'public' | 'private';

export interface ImagePlacement {
  /** The thread it was posted in; null for a post in the channel itself. */
  threadId: string | null;
  visibility: Visibility;
}

/**
 * Where a search is made from: the viewer's channel and, inside a thread, the thread (channelId is then
 * the thread's parent channel, as in ImageSource). Without a scope a search sees public images only.
 */
export interface ViewerScope {
  channelId: string;
  threadId?: string | null;
}

export interface ImageRecord extends ImageSource, ImagePlacement {
  id: string;
  communityId: string;
  hash: string;
  mime: string;
  width: number;
  height: number;
  hasEmbedding: boolean;
  /** False once deleted (soft: the row stays until the retention sweep). */
  live: boolean;
  createdAt: Date;
}

export interface ScoredImage extends ImageRecord {
  /** Cosine similarity with the query. */
  score: number;
}

export type JobStatus = 'queued' | 'running' | 'completed' | 'failed' | 'cancelled';

/** A delivery claim taken. */
export interface DeliveryClaim {
  /** An earlier claim existed and never marked the job delivered: parts of the reply may already be posted. */
  redelivery: boolean;
}

export interface JobRecord {
  id: string;
  idempotencyKey: string;
  communityId: string | null;
  /** Who asked (e.g. `discord:<user id>`), as given to createOrGet; null for jobs no one asked for (indexing). */
  authorKey: string | null;
  kind: JobKind;
  payload: JobPayload;
  replyTarget: ReplyTarget;
  status: JobStatus;
  result: JobResult | null;
  /** For failed jobs: the message for the user, and whether it was their input's fault. */
  error: { message: string; userFacing: boolean } | null;
  attempts: number;
  createdAt: Date;
  updatedAt: Date;
  deliveredAt: Date | null;
}

export interface Store {
  readonly kind: 'postgres' | 'pglite';
  /** The same connection, for tables an adapter keeps through its own migration (the playground's messages). */
  readonly sql: SqlQuery;
  communities: {
    ensure(ref: CommunityRef): Promise<Community>;
    getConfig(communityId: string): Promise<CommunityConfig>;
    updateConfig(communityId: string, patch: Partial<CommunityConfig>): Promise<CommunityConfig>;
  };
  blobs: {
    /** Stores bytes under their sha256; returns the hash. Idempotent. */
    put(bytes: Uint8Array, mime: string): Promise<string>;
    get(hash: string): Promise<{ bytes: Uint8Array; mime: string } | null>;
  };
  images: {
    /**
     * Inserts or returns the existing row for (community, hash, message). Placement defaults to public,
     * in the channel itself. A replay that says private makes a public row private (never the reverse).
     */
    add(
      communityId: string,
      hash: string,
      meta: { mime: string; width: number; height: number; attachmentId?: string | null } & ImageSource &
        Partial<ImagePlacement>,
    ): Promise<ImageRecord>;
    get(id: string): Promise<ImageRecord | null>;
    setEmbedding(id: string, embedding: Float32Array): Promise<void>;
    /**
     * k nearest by cosine among the images of one community that a viewer at `scope` may see (public
     * only when scope is absent), excluding ids; returns k rows when k exist.
     */
    search(
      communityId: string,
      embedding: Float32Array,
      k: number,
      excludeIds?: string[],
      scope?: ViewerScope,
    ): Promise<ScoredImage[]>;
    count(communityId: string): Promise<number>;
    /**
     * Soft-deletes a message's images; channelId is its channel or, for a message in a thread with a
     * channel id of its own (Discord), that thread. Returns how many rows were removed from the index.
     */
    deleteByMessage(communityId: string, channelId: string, messageId: string): Promise<number>;
    deleteByAuthor(communityId: string, authorId: string): Promise<number>;
    /** Soft-deletes the images of a deleted channel or thread (as channel or as thread); returns how many. */
    deleteByChannel(communityId: string, channelId: string): Promise<number>;
    /** Soft-deletes the images of one platform file (Discord attachment id, Slack file id). */
    deleteByAttachment(communityId: string, attachmentId: string): Promise<number>;
    /** After an edit: soft-deletes the message's images whose file is no longer among keptAttachmentIds. */
    deleteDroppedAttachments(
      communityId: string,
      channelId: string,
      messageId: string,
      keptAttachmentIds: string[],
    ): Promise<number>;
    /** `forget` opts a person out of indexing (true) until they opt back in (false). */
    setOptedOut(communityId: string, authorId: string, optedOut: boolean): Promise<void>;
    optedOut(communityId: string, authorId: string): Promise<boolean>;
    /**
     * Hard-deletes images soft-deleted at least retentionMs ago, and their blobs when no other image uses
     * the bytes; returns how many of each.
     */
    purgeDeleted(retentionMs: number): Promise<{ images: number; blobs: number }>;
  };
  jobs: {
    /** Creates the job, or returns the existing one with the same idempotency key. */
    createOrGet(input: {
      idempotencyKey: string;
      communityId: string | null;
      /** Who asked (e.g. `discord:<user id>`), counted by countActive for per-user caps. */
      authorKey?: string;
      payload: JobPayload;
      replyTarget: ReplyTarget;
    }): Promise<{ job: JobRecord; created: boolean }>;
    get(id: string): Promise<JobRecord | null>;
    markRunning(id: string): Promise<void>;
    complete(id: string, result: JobResult): Promise<void>;
    fail(id: string, error: { message: string; userFacing: boolean }): Promise<void>;
    /** Marks a queued or running job cancelled; false when it had already finished (or was cancelled). */
    cancel(id: string): Promise<boolean>;
    /** Updates the adapter's reply-target data (e.g. the id of the progress message). */
    updateReplyTarget(id: string, data: Record<string, unknown>): Promise<void>;
    /**
     * Claims the right to deliver a finished job's reply. Returns null if it was delivered or another
     * process holds an unexpired claim. A claim expires after leaseMs, so a crashed deliverer is replaced.
     */
    claimDelivery(id: string, owner: string, leaseMs: number): Promise<DeliveryClaim | null>;
    /**
     * Extends `owner`'s claim by leaseMs from now; false when another process has taken the job over or it
     * was delivered, after which `owner` must post nothing more of the reply.
     */
    renewDelivery(id: string, owner: string, leaseMs: number): Promise<boolean>;
    markDelivered(id: string, owner: string, receipt: Record<string, unknown>): Promise<void>;
    /** Finished (completed or failed) jobs not yet delivered, oldest first. */
    listUndelivered(platform: ReplyTarget['platform'], limit: number): Promise<JobRecord[]>;
    /** Queued or running jobs, oldest first: re-enqueued at start after an embedded process restarts. */
    listUnfinished(limit: number): Promise<JobRecord[]>;
    /**
     * Unfinished jobs of a user or community, for concurrency caps, in one lane: people's requests (the
     * default) or indexing. Index jobs never count against the requests' caps, nor requests against
     * indexing's (README, "Security and reliability").
     */
    countActive(filter: {
      communityId: string;
      authorKey?: string;
      lane?: 'requests' | 'indexing';
    }): Promise<number>;
  };
  rateLimits: {
    /**
     * Records a request of authorKey in the community unless `max` of its requests were already accepted
     * in the last windowMs (a sliding window). One atomic statement, so concurrent callers in any number
     * of processes share the count, and it survives restarts. `at` (epoch ms) is the database's clock
     * unless given. A refused request is not recorded; retryAfterMs says when one will be accepted.
     * Now and then (at most once per window per store) rows that have left the window are deleted.
     */
    take(input: {
      communityId: string;
      authorKey: string;
      max: number;
      windowMs: number;
      at?: number;
    }): Promise<{ allowed: boolean; retryAfterMs: number }>;
    /** Deletes the rows whose every request has left its window by `at` (default: now); returns how many. */
    sweep(at?: number): Promise<number>;
  };
  close(): Promise<void>;
}
