import { JOB_COLUMNS, type JobRow, json } from './rows.ts';
import type { Row, SqlClient } from './sql-client.ts';
import type { Store } from './types.ts';
import { isJobId, requireJobId, requireLimit, requireRowId } from './validate.ts';

/**
 * Jobs: created once per idempotency key, moved through their states by the worker, and delivered once.
 *
 * Delivery-claim protocol: a deliverer claims a finished job for a lease (claimDelivery) and only the
 * holder of an unexpired claim may mark it delivered (markDelivered); a crashed deliverer's claim
 * expires and the next claimant is told it is re-delivering, so the adapter can skip parts already posted.
 */

/** Thrown by markDelivered when the caller no longer holds the job's delivery claim. */
export class DeliveryClaimError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DeliveryClaimError';
  }
}

export function jobRepository(db: SqlClient): Store['jobs'] {
  /** Runs a statement on job $1 and returns its rows; no rows and no such job is an error naming it. */
  const jobStatement = async <T extends Row>(id: string, sql: string, params: unknown[] = []) => {
    requireJobId(id);
    const rows = await db.query<T>(sql, [id, ...params]);
    if (rows.length === 0 && (await db.query('SELECT 1 FROM jobs WHERE id = $1', [id])).length === 0) {
      throw new RangeError(`no job ${id}`);
    }
    return rows;
  };
  /** Runs a state-changing job update; a job that does not exist is an error, a refused transition is not. */
  const updateJob = async (id: string, sql: string, params: unknown[] = []) =>
    (await jobStatement(id, sql, params)).length > 0;

  return {
    async createOrGet(input) {
      const key = input.idempotencyKey;
      if (typeof key !== 'string' || key.length < 1 || key.length > 500) {
        throw new RangeError('idempotencyKey must be 1 to 500 characters');
      }
      if (input.communityId !== null) requireRowId(input.communityId, 'community id');
      // Insert-or-nothing, then read: concurrent callers with one key all end up with the same row.
      const [created] = await db.query<JobRow>(
        `INSERT INTO jobs (idempotency_key, community_id, author_key, kind, payload, reply_target)
         VALUES ($1, $2, $3, $4, $5::text::jsonb, $6::text::jsonb)
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING ${JOB_COLUMNS}`,
        [
          key,
          input.communityId,
          input.authorKey ?? null,
          input.payload.kind,
          json(input.payload),
          json(input.replyTarget),
        ],
      );
      if (created) return { job: created, created: true };
      const [existing] = await db.query<JobRow>(
        `SELECT ${JOB_COLUMNS} FROM jobs WHERE idempotency_key = $1`,
        [key],
      );
      return { job: existing!, created: false };
    },

    async get(id) {
      if (!isJobId(id)) return null;
      const [row] = await db.query<JobRow>(`SELECT ${JOB_COLUMNS} FROM jobs WHERE id = $1`, [id]);
      return row ?? null;
    },

    async markRunning(id) {
      // A retry after a recorded failure runs again, unless that failure was already delivered.
      await updateJob(
        id,
        `UPDATE jobs SET status = 'running', attempts = attempts + 1, updated_at = now()
         WHERE id = $1 AND status IN ('queued', 'running', 'failed') AND delivered_at IS NULL RETURNING 1`,
      );
    },

    async complete(id, result) {
      await updateJob(
        id,
        `UPDATE jobs SET status = 'completed', result = $2::text::jsonb, error = NULL, updated_at = now()
         WHERE id = $1 AND status IN ('queued', 'running', 'failed') AND delivered_at IS NULL RETURNING 1`,
        [json(result)],
      );
    },

    async fail(id, error) {
      await updateJob(
        id,
        `UPDATE jobs SET status = 'failed', error = $2::text::jsonb, updated_at = now()
         WHERE id = $1 AND status IN ('queued', 'running') RETURNING 1`,
        [json({ message: error.message, userFacing: error.userFacing })],
      );
    },

    async cancel(id) {
      return updateJob(
        id,
        `UPDATE jobs SET status = 'cancelled', updated_at = now()
         WHERE id = $1 AND status IN ('queued', 'running') RETURNING 1`,
      );
    },

    async updateReplyTarget(id, data) {
      await updateJob(
        id,
        `UPDATE jobs SET reply_target = jsonb_set(reply_target, '{data}',
           COALESCE(reply_target -> 'data', '{}'::jsonb) || $2::text::jsonb), updated_at = now()
         WHERE id = $1 RETURNING 1`,
        [json(data)],
      );
    },

    async claimDelivery(id, owner, leaseMs) {
      if (!owner) throw new RangeError('delivery owner must not be empty');
      if (!Number.isInteger(leaseMs) || leaseMs < 1)
        throw new RangeError(`leaseMs must be a positive whole number, got ${leaseMs}`);
      // One statement: concurrent claimers serialise on the row lock, and each re-checks the claim it finds.
      // The locked read of the row as it was tells whether an earlier claim existed: its deliverer may have
      // posted part of the reply before it lost the claim.
      const [claim] = await jobStatement<{ redelivery: boolean }>(
        id,
        `UPDATE jobs AS j SET delivery_owner = $2, delivery_claim_expires_at = now() + $3 * interval '1 millisecond'
         FROM (SELECT id, delivery_owner FROM jobs WHERE id = $1 FOR UPDATE) AS before
         WHERE j.id = before.id AND j.delivered_at IS NULL AND j.status IN ('completed', 'failed')
           AND (j.delivery_owner IS NULL OR j.delivery_owner = $2 OR j.delivery_claim_expires_at <= now())
         RETURNING before.delivery_owner IS NOT NULL AS redelivery`,
        [owner, leaseMs],
      );
      return claim ? { redelivery: claim.redelivery } : null;
    },

    async renewDelivery(id, owner, leaseMs) {
      return updateJob(
        id,
        `UPDATE jobs SET delivery_claim_expires_at = now() + $3 * interval '1 millisecond'
         WHERE id = $1 AND delivery_owner = $2 AND delivered_at IS NULL RETURNING 1`,
        [owner, leaseMs],
      );
    },

    async markDelivered(id, owner, receipt) {
      const marked = await updateJob(
        id,
        `UPDATE jobs SET delivered_at = now(), delivery_receipt = $3::text::jsonb, updated_at = now()
         WHERE id = $1 AND delivery_owner = $2 AND delivered_at IS NULL RETURNING 1`,
        [owner, json(receipt)],
      );
      if (marked) return;
      const [row] = await db.query<{ delivery_owner: string | null; delivered: boolean }>(
        'SELECT delivery_owner, delivered_at IS NOT NULL AS delivered FROM jobs WHERE id = $1',
        [id],
      );
      if (row?.delivered && row.delivery_owner === owner) return; // already marked by this owner
      throw new DeliveryClaimError(
        row?.delivered
          ? `job ${id} was already delivered by ${row.delivery_owner}`
          : `job ${id}: ${owner} does not hold the delivery claim (held by ${row?.delivery_owner ?? 'nobody'})`,
      );
    },

    async listUndelivered(platform, limit) {
      return db.query<JobRow>(
        `SELECT ${JOB_COLUMNS} FROM jobs
         WHERE platform = $1 AND delivered_at IS NULL AND status IN ('completed', 'failed')
         ORDER BY created_at LIMIT $2`,
        [platform, requireLimit(limit)],
      );
    },

    async listUnfinished(limit) {
      return db.query<JobRow>(
        `SELECT ${JOB_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at LIMIT $1`,
        [requireLimit(limit)],
      );
    },

    async countActive({ communityId, authorKey, lane = 'requests' }) {
      requireRowId(communityId, 'community id');
      if (lane !== 'requests' && lane !== 'indexing')
        throw new RangeError(`lane must be requests or indexing, got "${lane}"`);
      const [row] = await db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM jobs WHERE community_id = $1 AND status IN ('queued', 'running')
           AND ($2::text IS NULL OR author_key = $2) AND (kind = 'index') = $3`,
        [communityId, authorKey ?? null, lane === 'indexing'],
      );
      return row!.n;
    },
  };
}
