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
