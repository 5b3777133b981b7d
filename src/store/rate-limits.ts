import type { SqlClient } from './sql-client.ts';
import type { Store } from './types.ts';
import { requireRowId } from './validate.ts';

/**
 * The per-user request rate limit as a sliding log per user and community (migrations/003_rate_limits.sql),
 * updated by one atomic statement so every bot process and restart shares the count.
 */

function requireWindow(windowMs: number): number {
  if (!Number.isInteger(windowMs) || windowMs < 1 || windowMs > 2 ** 31 - 1)
    throw new RangeError(`windowMs must be a positive whole number of milliseconds, got ${windowMs}`);
  return windowMs;
}

function requireTime(at: number): number {
  if (!Number.isSafeInteger(at) || at < 0) throw new RangeError(`at must be epoch milliseconds, got ${at}`);
  return at;
}

/** The database's clock in epoch ms: every process counts by one clock, whatever its own says. */
const DB_NOW_MS = `(extract(epoch FROM now()) * 1000)::bigint`;
/** The time of a take: $3 when given, else the database's clock. */
const CLOCK_MS = `COALESCE($3::bigint, ${DB_NOW_MS})`;
/** In take's update: the row's accepted requests still inside the window, oldest first. */
const RECENT = `ARRAY(SELECT t FROM unnest(r.accepted_at) AS t WHERE t > EXCLUDED.last_request_at - $5::bigint ORDER BY t)`;

export function rateLimitRepository(db: SqlClient): Store['rateLimits'] {
  /** When this store last deleted expired rows (epoch ms of the take that did). */
  let lastSweep = Number.NEGATIVE_INFINITY;

  const sweep = async (at?: number) => {
    if (at !== undefined) requireTime(at);
    const rows = await db.query(
      `DELETE FROM rate_limits WHERE expires_at <= COALESCE($1::bigint, ${DB_NOW_MS}) RETURNING 1`,
      [at ?? null],
    );
    return rows.length;
  };

  return {
    async take({ communityId, authorKey, max, windowMs, at }) {
      requireRowId(communityId, 'community id');
      if (typeof authorKey !== 'string' || authorKey.length < 1 || authorKey.length > 500)
        throw new RangeError('authorKey must be 1 to 500 characters');
      if (!Number.isInteger(max) || max < 1)
        throw new RangeError(`max must be a positive whole number, got ${max}`);
      requireWindow(windowMs);
      if (at !== undefined) requireTime(at);
      // The old row is locked while it is updated, so concurrent takes of one user run one after the other
      // and each sees the requests the others accepted; two first takes meet in ON CONFLICT.
      const [row] = await db.query<{ allowed: boolean; retry_after_ms: number }>(
        `INSERT INTO rate_limits AS r (community_id, author_key, accepted_at, last_request_at, last_allowed, expires_at)
         VALUES ($1, $2, ARRAY[${CLOCK_MS}], ${CLOCK_MS}, true, ${CLOCK_MS} + $5::bigint)
         ON CONFLICT (community_id, author_key) DO UPDATE SET
           accepted_at = CASE WHEN cardinality(${RECENT}) < $4::int
             THEN ${RECENT} || EXCLUDED.last_request_at ELSE ${RECENT} END,
           last_allowed = cardinality(${RECENT}) < $4::int,
           expires_at = CASE WHEN cardinality(${RECENT}) < $4::int THEN EXCLUDED.expires_at ELSE r.expires_at END,
           last_request_at = EXCLUDED.last_request_at
         RETURNING last_allowed AS allowed, CASE WHEN last_allowed THEN 0
           -- Refused: the wait until enough accepted requests leave the window for one more to fit.
           ELSE (accepted_at[cardinality(accepted_at) - $4::int + 1] + $5::bigint - last_request_at)::int
         END AS retry_after_ms`,
        [communityId, authorKey, at ?? null, max, windowMs],
      );
      const now = at ?? Date.now();
      if (now - lastSweep >= windowMs) {
        lastSweep = now;
        await sweep(at).catch(() => {
          lastSweep = Number.NEGATIVE_INFINITY; // a failed sweep is retried by the next take
        });
      }
      return { allowed: row!.allowed, retryAfterMs: Math.max(0, row!.retry_after_ms) };
    },

    sweep,
  };
}
