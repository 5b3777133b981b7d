import type { Config } from '../../config.ts';
import type { GillMetrics } from '../../metrics/metrics.ts';
import type { CommunityConfig, Store } from '../../store/types.ts';

/**
 * Fairness: jobs per user per minute (a sliding window), and caps on unfinished jobs per user and per
 * community. All are counted in the store, so they hold across bot processes and restarts. Over a limit,
 * the user gets a message saying which limit and when to try again.
 */

/** The window of CommunityConfig.userJobsPerMinute. */
export const RATE_WINDOW_MS = 60_000;

export interface LimitCheck {
  store: Store;
  communityId: string;
  authorKey: string;
  config: CommunityConfig;
  /** Jobs of this very request already recorded in the store (so counted by countActive), not counted against it. */
  recordedSelf?: number;
  /** Counts each refusal by the limit that refused it. */
  metrics?: GillMetrics;
}

/**
 * Null when the user may start a job now, else the message explaining which limit was hit. A request
 * that passes is counted against the per-minute limit; a refused one is not.
 */
export async function checkLimits(check: LimitCheck): Promise<string | null> {
  const { store, communityId, authorKey, config } = check;
  const refuse = (limit: 'user_concurrent' | 'community_concurrent' | 'per_minute', message: string) => {
    check.metrics?.rateLimitRefusals.inc({ limit });
    return message;
  };
  const self = check.recordedSelf ?? 0;
  const mine = (await store.jobs.countActive({ communityId, authorKey })) - self;
  if (mine >= config.userConcurrentJobs) {
    return refuse(
      'user_concurrent',
      `You already have ${mine} request${mine === 1 ? '' : 's'} in progress (the limit is ${config.userConcurrentJobs}). Please wait for ${mine === 1 ? 'it' : 'one'} to finish.`,
    );
  }
  const all = (await store.jobs.countActive({ communityId })) - self;
  if (all >= config.communityConcurrentJobs) {
    return refuse(
      'community_concurrent',
      `This community already has ${all} requests in progress (the limit is ${config.communityConcurrentJobs}). Please try again in a moment.`,
    );
  }
  const rate = await store.rateLimits.take({
    communityId,
    authorKey,
    max: config.userJobsPerMinute,
    windowMs: RATE_WINDOW_MS,
  });
  if (!rate.allowed) {
    return refuse(
      'per_minute',
      `You can start ${config.userJobsPerMinute} request${config.userJobsPerMinute === 1 ? '' : 's'} per minute. Please try again in ${Math.ceil(rate.retryAfterMs / 1000)} s.`,
    );
  }
  return null;
}

/**
 * Indexing's own lane, apart from people's requests (whose caps index jobs never count against): a cap on
 * a community's unfinished index jobs, and on the images one person may have indexed per minute. An image
 * over either is not indexed, and its poster is told why; no request is ever refused because of indexing.
 */
export interface IndexingLimits {
  pendingPerCommunity: number;
  imagesPerUserPerMinute: number;
}

export function indexingLimits(
  config: Partial<Pick<Config, 'GILL_INDEX_MAX_PENDING' | 'GILL_INDEX_PER_USER_PER_MINUTE'>>,
): IndexingLimits {
  return {
    pendingPerCommunity: config.GILL_INDEX_MAX_PENDING ?? 500,
    imagesPerUserPerMinute: config.GILL_INDEX_PER_USER_PER_MINUTE ?? 20,
  };
}

/** Null when one more of the poster's images may be indexed now (and counts it), else why not. */
export async function checkIndexingLimits(check: {
  store: Store;
  communityId: string;
  /** The poster, as authorKey() writes them. */
  posterKey: string;
  limits: IndexingLimits;
  /** Counts each refusal by the limit that refused it. */
  metrics?: GillMetrics;
}): Promise<string | null> {
  const { store, communityId, limits } = check;
  const refuse = (limit: 'index_pending' | 'index_per_minute', message: string) => {
    check.metrics?.rateLimitRefusals.inc({ limit });
    return message;
  };
  const pending = await store.jobs.countActive({ communityId, lane: 'indexing' });
  if (pending >= limits.pendingPerCommunity) {
    return refuse('index_pending', `the image index is busy (${pending} images waiting); it was not added`);
  }
  const rate = await store.rateLimits.take({
    communityId,
    // Its own key, so indexed images never use up the poster's requests per minute.
    authorKey: `index:${check.posterKey}`,
    max: limits.imagesPerUserPerMinute,
    windowMs: RATE_WINDOW_MS,
  });
  if (!rate.allowed) {
    return refuse(
      'index_per_minute',
      `only ${limits.imagesPerUserPerMinute} of your images a minute are added to the index; it was not added`,
    );
  }
  return null;
}
