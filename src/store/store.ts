import { createHash } from 'node:crypto';
import { type CommunityRef, communitySchema, UserInputError } from '../jobs.ts';
import { parseConfigPatch, resolveConfig } from './community-config.ts';
import type { Row, SqlClient } from './sql-client.ts';
import type { Community, ImageRecord, JobRecord, JobStatus, ScoredImage, Store } from './types.ts';
import { ensureEmbeddingIndex, nearest, normalisedVector } from './vector-search.ts';

/**
 * The Store on any SqlClient (Postgres or PGlite). Ids are bigint identities (communities, images) or
 * uuids (jobs, which users can name in buttons, so they must not be guessable), always handled as
 * strings. A lookup by a malformed id finds nothing; a write with one is a programming error and throws.
 */

/** Thrown by markDelivered when the caller no longer holds the job's delivery claim. */
export class DeliveryClaimError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DeliveryClaimError';
  }
}

const BIGINT_ID = /^[1-9]\d{0,18}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const SHA256 = /^[0-9a-f]{64}$/;
const MIME = /^[\w.+-]+\/[\w.+-]+$/;

function requireId(id: string, what: string, pattern = BIGINT_ID): string {
  if (typeof id !== 'string' || !pattern.test(id))
    throw new RangeError(`${what} must be a valid id, got "${id}"`);
  return id;
}

function requireMime(mime: string): string {
  if (typeof mime !== 'string' || mime.length > 100 || !MIME.test(mime)) {
    throw new RangeError(`mime must be a media type such as image/png, got "${mime}"`);
  }
  return mime;
}

function requireLimit(limit: number): number {
  if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) {
    throw new RangeError(`limit must be a whole number from 1 to 10000, got ${limit}`);
  }
  return limit;
}

/** Postgres text and jsonb cannot hold U+0000, which chat messages can contain: it is dropped. */
const withoutNul = (text: string) => text.replaceAll('\0', '');
const json = (value: unknown) =>
  JSON.stringify(value, (_key, v: unknown) => (typeof v === 'string' ? withoutNul(v) : v));
const optionalText = (text: string | null | undefined) => (text == null ? null : withoutNul(text));

const IMAGE_COLUMNS = `id::text AS id, community_id::text AS community_id, hash, mime, width, height, channel_id,
  message_id, author_id, permalink, title, embedding IS NOT NULL AS has_embedding, created_at`;

interface ImageRow extends Row {
  id: string;
  community_id: string;
  hash: string;
  mime: string;
  width: number;
  height: number;
  channel_id: string | null;
  message_id: string | null;
  author_id: string | null;
  permalink: string | null;
  title: string | null;
  has_embedding: boolean;
  created_at: Date;
}

function toImage(row: ImageRow): ImageRecord {
  return {
    id: row.id,
    communityId: row.community_id,
    hash: row.hash,
    mime: row.mime,
    width: row.width,
    height: row.height,
    channelId: row.channel_id,
    messageId: row.message_id,
    authorId: row.author_id,
    permalink: row.permalink,
    title: row.title,
    hasEmbedding: row.has_embedding,
    createdAt: row.created_at,
  };
}

const JOB_COLUMNS = `id::text AS id, idempotency_key, community_id::text AS community_id, author_key, kind, payload, reply_target,
  status, result, error, attempts, created_at, updated_at, delivered_at`;

interface JobRow extends Row {
  id: string;
  idempotency_key: string;
  community_id: string | null;
  author_key: string | null;
  kind: JobRecord['kind'];
  payload: JobRecord['payload'];
  reply_target: JobRecord['replyTarget'];
  status: JobStatus;
  result: JobRecord['result'];
  error: JobRecord['error'];
  attempts: number;
  created_at: Date;
  updated_at: Date;
  delivered_at: Date | null;
}

function toJob(row: JobRow): JobRecord {
  return {
    id: row.id,
    idempotencyKey: row.idempotency_key,
    communityId: row.community_id,
    authorKey: row.author_key,
    kind: row.kind,
    payload: row.payload,
    replyTarget: row.reply_target,
    status: row.status,
    result: row.result,
    error: row.error,
    attempts: row.attempts,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    deliveredAt: row.delivered_at,
  };
}

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
/** The time of a rate-limit take: $3 when given, else the database's clock. */
const CLOCK_MS = `COALESCE($3::bigint, ${DB_NOW_MS})`;
/** In rateLimits.take's update: the row's accepted requests still inside the window, oldest first. */
const RECENT = `ARRAY(SELECT t FROM unnest(r.accepted_at) AS t WHERE t > EXCLUDED.last_request_at - $5::bigint ORDER BY t)`;

export function createStore(db: SqlClient): Store {
  /** When this store last deleted expired rate-limit rows (epoch ms of the take that did). */
  let lastSweep = Number.NEGATIVE_INFINITY;
  /** One index build per dimension per process; failures are retried on the next call. */
  const indexedDims = new Map<number, Promise<unknown>>();
  const ensureIndex = (dim: number) => {
    let pending = indexedDims.get(dim);
    if (!pending) {
      pending = ensureEmbeddingIndex(db, dim).catch((error) => {
        indexedDims.delete(dim);
        throw error;
      });
      indexedDims.set(dim, pending);
    }
    return pending;
  };

  /** Runs a state-changing job update; a job that does not exist is an error, a refused transition is not. */
  /** Runs a statement on job $1 and returns its rows; no rows and no such job is an error naming it. */
  const jobStatement = async <T extends Row>(id: string, sql: string, params: unknown[] = []) => {
    requireId(id, 'job id', UUID);
    const rows = await db.query<T>(sql, [id, ...params]);
    if (rows.length === 0 && (await db.query('SELECT 1 FROM jobs WHERE id = $1', [id])).length === 0) {
      throw new RangeError(`no job ${id}`);
    }
    return rows;
  };
  const updateJob = async (id: string, sql: string, params: unknown[] = []) =>
    (await jobStatement(id, sql, params)).length > 0;

  const sweepRateLimits = async (at?: number) => {
    if (at !== undefined) requireTime(at);
    const rows = await db.query(
      `DELETE FROM rate_limits WHERE expires_at <= COALESCE($1::bigint, ${DB_NOW_MS}) RETURNING 1`,
      [at ?? null],
    );
    return rows.length;
  };

  return {
    kind: db.kind,
    sql: db,

    communities: {
      async ensure(ref: CommunityRef): Promise<Community> {
        const parsed = communitySchema.safeParse(ref);
        if (!parsed.success) {
          throw new UserInputError(`Invalid community: ${parsed.error.issues[0]?.message ?? 'bad value'}`);
        }
        const { platform, externalId } = parsed.data;
        const find = () =>
          db.query<{ id: string }>(
            'SELECT id::text AS id FROM communities WHERE platform = $1 AND external_id = $2',
            [platform, externalId],
          );
        const row =
          (await find())[0] ??
          (
            await db.query<{ id: string }>(
              `INSERT INTO communities (platform, external_id) VALUES ($1, $2)
               ON CONFLICT (platform, external_id) DO NOTHING RETURNING id::text AS id`,
              [platform, externalId],
            )
          )[0] ??
          (await find())[0]!;
        return { id: row.id, platform, externalId };
      },

      async getConfig(communityId) {
        requireId(communityId, 'community id');
        const [row] = await db.query<{ settings: unknown }>(
          `SELECT cc.settings FROM communities c LEFT JOIN community_config cc ON cc.community_id = c.id
           WHERE c.id = $1`,
          [communityId],
        );
        if (!row) throw new RangeError(`no community ${communityId}`);
        return resolveConfig(row.settings);
      },

      async updateConfig(communityId, patch) {
        requireId(communityId, 'community id');
        const valid = parseConfigPatch(patch);
        try {
          const [row] = await db.query<{ settings: unknown }>(
            `INSERT INTO community_config (community_id, settings) VALUES ($1, $2::text::jsonb)
             ON CONFLICT (community_id) DO UPDATE
               SET settings = community_config.settings || EXCLUDED.settings, updated_at = now()
             RETURNING settings`,
            [communityId, json(valid)],
          );
          return resolveConfig(row!.settings);
        } catch (error) {
          if ((error as { code?: string }).code === '23503')
            throw new RangeError(`no community ${communityId}`);
          throw error;
        }
      },
    },

    blobs: {
      async put(bytes, mime) {
        requireMime(mime);
        const hash = createHash('sha256').update(bytes).digest('hex');
        await db.query(
          'INSERT INTO blobs (hash, bytes, mime) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING',
          [hash, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), mime],
        );
        return hash;
      },

      async get(hash) {
        if (!SHA256.test(hash)) return null;
        const [row] = await db.query<{ bytes: Uint8Array; mime: string }>(
          'SELECT bytes, mime FROM blobs WHERE hash = $1',
          [hash],
        );
        return row ? { bytes: row.bytes, mime: row.mime } : null;
      },
    },

    images: {
      async add(communityId, hash, meta) {
        requireId(communityId, 'community id');
        if (!SHA256.test(hash)) throw new RangeError(`image hash must be a sha256 hex digest, got "${hash}"`);
        requireMime(meta.mime);
        for (const side of ['width', 'height'] as const) {
          const v = meta[side];
          if (!Number.isInteger(v) || v < 1 || v > 1_000_000)
            throw new RangeError(`image ${side} must be a positive whole number, got ${v}`);
        }
        const source = [meta.channelId, meta.messageId];
        let inserted: ImageRow[];
        try {
          inserted = await db.query<ImageRow>(
            `INSERT INTO images (community_id, hash, mime, width, height, channel_id, message_id, author_id, permalink, title)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT ON CONSTRAINT images_source_key DO NOTHING
             RETURNING ${IMAGE_COLUMNS}`,
            [
              communityId,
              hash,
              meta.mime,
              meta.width,
              meta.height,
              ...source,
              meta.authorId,
              optionalText(meta.permalink),
              optionalText(meta.title),
            ],
          );
        } catch (error) {
          const e = error as { code?: string; constraint?: string };
          if (e.code === '23503') {
            throw new RangeError(
              e.constraint?.includes('hash')
                ? `no blob ${hash}: store the image bytes first`
                : `no community ${communityId}`,
            );
          }
          throw error;
        }
        // An existing row (even a deleted one: a replayed event must not bring back a removed image).
        const [row] = inserted.length
          ? inserted
          : await db.query<ImageRow>(
              `SELECT ${IMAGE_COLUMNS} FROM images WHERE community_id = $1 AND hash = $2
               AND channel_id IS NOT DISTINCT FROM $3 AND message_id IS NOT DISTINCT FROM $4`,
              [communityId, hash, ...source],
            );
        return toImage(row!);
      },

      async get(id) {
        if (!BIGINT_ID.test(id)) return null;
        const [row] = await db.query<ImageRow>(`SELECT ${IMAGE_COLUMNS} FROM images WHERE id = $1`, [id]);
        return row ? toImage(row) : null;
      },

      async setEmbedding(id, embedding) {
        requireId(id, 'image id');
        const vector = normalisedVector(embedding);
        await ensureIndex(embedding.length);
        const rows = await db.query(
          'UPDATE images SET embedding = $2::text::vector WHERE id = $1 RETURNING 1',
          [id, vector],
        );
        if (rows.length === 0) throw new RangeError(`no image ${id}`);
      },

      async search(communityId, embedding, k, excludeIds = []) {
        requireId(communityId, 'community id');
        const rows = await nearest<ImageRow & { score: number }>(db, IMAGE_COLUMNS, {
          communityId,
          embedding,
          k,
          excludeIds,
        });
        return rows.map((row): ScoredImage => ({ ...toImage(row), score: row.score }));
      },

      async count(communityId) {
        requireId(communityId, 'community id');
        const [row] = await db.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM images WHERE community_id = $1 AND deleted_at IS NULL',
          [communityId],
        );
        return row!.n;
      },

      async deleteByMessage(communityId, channelId, messageId) {
        requireId(communityId, 'community id');
        const rows = await db.query(
          `UPDATE images SET deleted_at = now()
           WHERE community_id = $1 AND channel_id = $2 AND message_id = $3 AND deleted_at IS NULL RETURNING 1`,
          [communityId, channelId, messageId],
        );
        return rows.length;
      },

      async deleteByAuthor(communityId, authorId) {
        requireId(communityId, 'community id');
        const rows = await db.query(
          `UPDATE images SET deleted_at = now()
           WHERE community_id = $1 AND author_id = $2 AND deleted_at IS NULL RETURNING 1`,
          [communityId, authorId],
        );
        return rows.length;
      },
    },

    jobs: {
      async createOrGet(input) {
        const key = input.idempotencyKey;
        if (typeof key !== 'string' || key.length < 1 || key.length > 500) {
          throw new RangeError('idempotencyKey must be 1 to 500 characters');
        }
        if (input.communityId !== null) requireId(input.communityId, 'community id');
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
        if (created) return { job: toJob(created), created: true };
        const [existing] = await db.query<JobRow>(
          `SELECT ${JOB_COLUMNS} FROM jobs WHERE idempotency_key = $1`,
          [key],
        );
        return { job: toJob(existing!), created: false };
      },

      async get(id) {
        if (!UUID.test(id)) return null;
        const [row] = await db.query<JobRow>(`SELECT ${JOB_COLUMNS} FROM jobs WHERE id = $1`, [id]);
        return row ? toJob(row) : null;
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
        const rows = await db.query<JobRow>(
          `SELECT ${JOB_COLUMNS} FROM jobs
           WHERE platform = $1 AND delivered_at IS NULL AND status IN ('completed', 'failed')
           ORDER BY created_at LIMIT $2`,
          [platform, requireLimit(limit)],
        );
        return rows.map(toJob);
      },

      async listUnfinished(limit) {
        const rows = await db.query<JobRow>(
          `SELECT ${JOB_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at LIMIT $1`,
          [requireLimit(limit)],
        );
        return rows.map(toJob);
      },

      async countActive({ communityId, authorKey }) {
        requireId(communityId, 'community id');
        const [row] = await db.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM jobs WHERE community_id = $1 AND status IN ('queued', 'running')
             AND ($2::text IS NULL OR author_key = $2)`,
          [communityId, authorKey ?? null],
        );
        return row!.n;
      },
    },

    rateLimits: {
      async take({ communityId, authorKey, max, windowMs, at }) {
        requireId(communityId, 'community id');
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
          await sweepRateLimits(at).catch(() => {
            lastSweep = Number.NEGATIVE_INFINITY; // a failed sweep is retried by the next take
          });
        }
        return { allowed: row!.allowed, retryAfterMs: Math.max(0, row!.retry_after_ms) };
      },

      sweep: sweepRateLimits,
    },

    close: () => db.close(),
  };
}
