import type { SqlClient } from './sql-client.ts';
import type { Store } from './types.ts';
import { requireJobId, requireRowId } from './validate.ts';

/**
 * Decision feedback per community (migrations/006_decision_feedback.sql): recorded, withdrawn, summed
 * with exponential decay by age, and reset.
 */

function requireAuthor(authorKey: string): string {
  if (typeof authorKey !== 'string' || authorKey.length < 1 || authorKey.length > 500)
    throw new RangeError('authorKey must be 1 to 500 characters');
  return authorKey;
}

export function feedbackRepository(db: SqlClient): Store['feedback'] {
  return {
    async record({ communityId, jobId, authorKey, source, direction, at }) {
      requireRowId(communityId, 'community id');
      requireJobId(jobId);
      requireAuthor(authorKey);
      if (direction !== 1 && direction !== -1)
        throw new RangeError(`direction must be 1 or -1, got ${direction}`);
      // A person's later vote on the same reply replaces the earlier one, and counts from now.
      await db.query(
        `INSERT INTO decision_feedback (community_id, job_id, author_key, source, direction, created_at)
         VALUES ($1, $2, $3, $4, $5, COALESCE($6::timestamptz, now()))
         ON CONFLICT (job_id, author_key, source)
           DO UPDATE SET direction = EXCLUDED.direction, created_at = EXCLUDED.created_at`,
        [communityId, jobId, authorKey, source, direction, at ?? null],
      );
    },

    async withdraw({ jobId, authorKey, source, direction }) {
      requireJobId(jobId);
      requireAuthor(authorKey);
      const rows = await db.query(
        `DELETE FROM decision_feedback WHERE job_id = $1 AND author_key = $2 AND source = $3 AND direction = $4
         RETURNING 1`,
        [jobId, authorKey, source, direction],
      );
      return rows.length > 0;
    },

    async sum(communityId, halfLifeMs) {
      requireRowId(communityId, 'community id');
      if (!(halfLifeMs > 0)) throw new RangeError(`halfLifeMs must be positive, got ${halfLifeMs}`);
      const [row] = await db.query<{ weighted: number | null; events: number }>(
        `SELECT sum(direction * power(0.5, extract(epoch FROM now() - created_at) * 1000 / $2::float8))::float8
                  AS weighted,
                count(*)::int AS events
         FROM decision_feedback WHERE community_id = $1`,
        [communityId, halfLifeMs],
      );
      return { weighted: row?.weighted ?? 0, events: row?.events ?? 0 };
    },

    async reset(communityId) {
      requireRowId(communityId, 'community id');
      return (
        await db.query('DELETE FROM decision_feedback WHERE community_id = $1 RETURNING 1', [communityId])
      ).length;
    },
  };
}
