import type { CommunityConfig, Store } from '../../store/types.ts';

/**
 * Fairness: jobs per user per minute (a sliding window kept in this bot process), and caps on unfinished
 * jobs per user and per community (counted in the store, so they hold across processes and restarts).
 * Over a limit, the user gets a message saying which limit and when to try again.
 */

export class RateLimiter {
  private readonly hits = new Map<string, number[]>();

  constructor(
    private readonly windowMs = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Records a hit for key unless max hits are already inside the window; returns ms to wait, or 0. */
  take(key: string, max: number): number {
    const now = this.now();
    const recent = (this.hits.get(key) ?? []).filter((t) => t > now - this.windowMs);
    if (recent.length >= max) {
      this.hits.set(key, recent);
      return recent[0]! + this.windowMs - now;
    }
    recent.push(now);
    this.hits.set(key, recent);
    // Forget idle keys so the map stays as small as the set of active users.
    if (this.hits.size > 10_000) {
      for (const [k, times] of this.hits)
        if (times.every((t) => t <= now - this.windowMs)) this.hits.delete(k);
    }
    return 0;
  }
}

export interface LimitCheck {
  store: Store;
  limiter: RateLimiter;
  communityId: string;
  authorKey: string;
  config: CommunityConfig;
  /** Jobs of this very request already recorded in the store (so counted by countActive), not counted against it. */
  recordedSelf?: number;
}

/** Null when the user may start a job now, else the message explaining which limit was hit. */
export async function checkLimits(check: LimitCheck): Promise<string | null> {
  const { store, communityId, authorKey, config } = check;
  const self = check.recordedSelf ?? 0;
  const mine = (await store.jobs.countActive({ communityId, authorKey })) - self;
  if (mine >= config.userConcurrentJobs) {
    return `You already have ${mine} request${mine === 1 ? '' : 's'} in progress (the limit is ${config.userConcurrentJobs}). Please wait for ${mine === 1 ? 'it' : 'one'} to finish.`;
  }
  const all = (await store.jobs.countActive({ communityId })) - self;
  if (all >= config.communityConcurrentJobs) {
    return `This community already has ${all} requests in progress (the limit is ${config.communityConcurrentJobs}). Please try again in a moment.`;
  }
  const waitMs = check.limiter.take(authorKey, config.userJobsPerMinute);
  if (waitMs > 0) {
    return `You can start ${config.userJobsPerMinute} request${config.userJobsPerMinute === 1 ? '' : 's'} per minute. Please try again in ${Math.ceil(waitMs / 1000)} s.`;
  }
  return null;
}
