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
  channelId: string | null;
  messageId: string | null;
  authorId: string | null;
  permalink: string | null;
  /** A human name for the image (file name, emoji name). */
  title: string | null;
}

export interface ImageRecord extends ImageSource {
  id: string;
  communityId: string;
  hash: string;
  mime: string;
  width: number;
  height: number;
  hasEmbedding: boolean;
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
    /** Inserts or returns the existing row for (community, hash, message). */
    add(
      communityId: string,
      hash: string,
      meta: { mime: string; width: number; height: number } & ImageSource,
    ): Promise<ImageRecord>;
    get(id: string): Promise<ImageRecord | null>;
    setEmbedding(id: string, embedding: Float32Array): Promise<void>;
    /** k nearest by cosine within one community, excluding ids; returns k rows when k exist. */
    search(
      communityId: string,
      embedding: Float32Array,
      k: number,
      excludeIds?: string[],
    ): Promise<ScoredImage[]>;
    count(communityId: string): Promise<number>;
    /** Soft-deletes; returns how many rows were removed from the index. */
    deleteByMessage(communityId: string, channelId: string, messageId: string): Promise<number>;
    deleteByAuthor(communityId: string, authorId: string): Promise<number>;
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
    markDelivered(id: string, owner: string, receipt: Record<string, unknown>): Promise<void>;
    /** Finished (completed or failed) jobs not yet delivered, oldest first. */
    listUndelivered(platform: ReplyTarget['platform'], limit: number): Promise<JobRecord[]>;
    /** Queued or running jobs, oldest first: re-enqueued at start after an embedded process restarts. */
    listUnfinished(limit: number): Promise<JobRecord[]>;
    /** Unfinished jobs of a user or community, for concurrency caps. */
    countActive(filter: { communityId: string; authorKey?: string }): Promise<number>;
    /**
     * Completed chat jobs of a conversation (reply_target.data.conversation.thread, see
     * src/bots/core/conversation.ts), oldest first: the bot's own turns as it answered them.
     */
    listConversationAnswers(communityId: string, thread: string, limit: number): Promise<JobRecord[]>;
    /** The chat job whose reply includes a message (reply_target.data.messageTs holds its id); null if none. */
    findChatByReplyMessage(communityId: string, messageId: string): Promise<JobRecord | null>;
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
  /** What people told the bot about its retrieve/generate decisions (src/bots/core/feedback.ts). */
  feedback: {
    /** Records one person's push on one reply towards retrieving (+1) or generating (-1); a new vote replaces theirs. */
    record(input: {
      communityId: string;
      jobId: string;
      authorKey: string;
      source: FeedbackSource;
      direction: 1 | -1;
      /** When it was given; now unless set. */
      at?: Date;
    }): Promise<void>;
    /** Takes back a vote (a removed reaction); false when there was none in that direction. */
    withdraw(input: {
      jobId: string;
      authorKey: string;
      source: FeedbackSource;
      direction: 1 | -1;
    }): Promise<boolean>;
    /** The community's directions summed, each weighted 0.5^(age / halfLifeMs), and how many there are. */
    sum(communityId: string, halfLifeMs: number): Promise<{ weighted: number; events: number }>;
    /** Forgets the community's feedback; returns how many events were deleted. */
    reset(communityId: string): Promise<number>;
  };
  close(): Promise<void>;
}

/** A 👍/👎 reaction on a reply, or a press of "Retrieve instead" / "Generate instead". */
export type FeedbackSource = 'reaction' | 'button';
