import { foreignKeyViolation, IMAGE_COLUMNS, type ImageRow, optionalText } from './rows.ts';
import type { SqlClient } from './sql-client.ts';
import type { ScoredImage, Store } from './types.ts';
import { isRowId, isSha256, requireMime, requireRowId } from './validate.ts';
import { ensureEmbeddingIndex, nearest, normalisedVector, planner } from './vector-search.ts';

/** Soft-deletes the live images of community $1 matching `where`; returns how many. */
async function softDelete(db: SqlClient, where: string, params: unknown[]): Promise<number> {
  const rows = await db.query(
    `UPDATE images SET deleted_at = now() WHERE community_id = $1 AND ${where} AND deleted_at IS NULL RETURNING 1`,
    params,
  );
  return rows.length;
}

/** The gallery: images posted in indexed channels, their source, their embeddings, and search over them. */
export function imageRepository(db: SqlClient): Store['images'] {
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

  const planFor = planner(db);

  return {
    async add(communityId, hash, meta) {
      requireRowId(communityId, 'community id');
      if (!isSha256(hash)) throw new RangeError(`image hash must be a sha256 hex digest, got "${hash}"`);
      requireMime(meta.mime);
      for (const side of ['width', 'height'] as const) {
        const v = meta[side];
        if (!Number.isInteger(v) || v < 1 || v > 1_000_000)
          throw new RangeError(`image ${side} must be a positive whole number, got ${v}`);
      }
      const threadId = meta.threadId ?? null;
      const visibility = meta.visibility ?? 'public';
      if (visibility !== 'public' && visibility !== 'private')
        throw new RangeError(`image visibility must be public or private, got "${visibility}"`);
      if ((visibility === 'private' || threadId !== null) && meta.channelId == null)
        throw new RangeError('an image that is private or posted in a thread needs its channelId');
      const source = [meta.channelId, meta.messageId];
      let inserted: ImageRow[];
      try {
        // A replay that learnt the source is private tightens the row; nothing ever widens it.
        // A message deleted while its image was downloading left a deleted_sources row: stored deleted.
        inserted = await db.query<ImageRow>(
          `INSERT INTO images (community_id, hash, mime, width, height, channel_id, message_id, author_id, permalink, title,
             thread_id, visibility, attachment_id, deleted_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
             CASE WHEN EXISTS (SELECT 1 FROM deleted_sources d WHERE d.community_id = $1 AND d.message_id = $7
               AND d.channel_id IN ($6, $11)) THEN now() END)
           ON CONFLICT ON CONSTRAINT images_source_key DO UPDATE
             SET visibility = EXCLUDED.visibility, thread_id = EXCLUDED.thread_id
             WHERE images.visibility = 'public' AND EXCLUDED.visibility = 'private'
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
            threadId,
            visibility,
            optionalText(meta.attachmentId ?? null),
          ],
        );
      } catch (error) {
        const violation = foreignKeyViolation(error);
        if (violation) {
          throw new RangeError(
            violation.constraint?.includes('hash')
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
      return row!;
    },

    async get(id) {
      if (!isRowId(id)) return null;
      const [row] = await db.query<ImageRow>(`SELECT ${IMAGE_COLUMNS} FROM images WHERE id = $1`, [id]);
      return row ?? null;
    },

    async setEmbedding(id, embedding) {
      requireRowId(id, 'image id');
      const vector = normalisedVector(embedding);
      await ensureIndex(embedding.length);
      const rows = await db.query(
        'UPDATE images SET embedding = $2::text::vector WHERE id = $1 RETURNING 1',
        [id, vector],
      );
      if (rows.length === 0) throw new RangeError(`no image ${id}`);
    },

    async search(communityId, embedding, k, excludeIds = [], scope) {
      requireRowId(communityId, 'community id');
      return nearest<ImageRow & ScoredImage>(db, IMAGE_COLUMNS, {
        communityId,
        scope,
        embedding,
        k,
        excludeIds,
        plan: await planFor(communityId, embedding.length),
      });
    },

    async count(communityId) {
      requireRowId(communityId, 'community id');
      const [row] = await db.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM images WHERE community_id = $1 AND deleted_at IS NULL',
        [communityId],
      );
      return row!.n;
    },

    async deleteByMessage(communityId, channelId, messageId) {
      requireRowId(communityId, 'community id');
      // Remembered, so an image of the message still downloading is stored deleted (see add).
      await db.query(
        `INSERT INTO deleted_sources (community_id, channel_id, message_id) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING`,
        [communityId, channelId, messageId],
      );
      const rows = await db.query(
        `UPDATE images SET deleted_at = now()
         WHERE community_id = $1 AND (channel_id = $2 OR thread_id = $2) AND message_id = $3
           AND deleted_at IS NULL RETURNING 1`,
        [communityId, channelId, messageId],
      );
      return rows.length;
    },

    async deleteByChannel(communityId, channelId) {
      requireRowId(communityId, 'community id');
      return softDelete(db, '(channel_id = $2 OR thread_id = $2)', [communityId, channelId]);
    },

    async deleteByAttachment(communityId, attachmentId) {
      requireRowId(communityId, 'community id');
      return softDelete(db, 'attachment_id = $2', [communityId, attachmentId]);
    },

    async deleteDroppedAttachments(communityId, channelId, messageId, keptAttachmentIds) {
      requireRowId(communityId, 'community id');
      return softDelete(
        db,
        `(channel_id = $2 OR thread_id = $2) AND message_id = $3
         AND (attachment_id IS NULL OR NOT (attachment_id = ANY ($4::text[])))`,
        [communityId, channelId, messageId, keptAttachmentIds],
      );
    },

    async setOptedOut(communityId, authorId, optedOut) {
      requireRowId(communityId, 'community id');
      await db.query(
        optedOut
          ? 'INSERT INTO index_opt_outs (community_id, author_id) VALUES ($1, $2) ON CONFLICT DO NOTHING'
          : 'DELETE FROM index_opt_outs WHERE community_id = $1 AND author_id = $2',
        [communityId, authorId],
      );
    },

    async optedOut(communityId, authorId) {
      requireRowId(communityId, 'community id');
      const rows = await db.query('SELECT 1 FROM index_opt_outs WHERE community_id = $1 AND author_id = $2', [
        communityId,
        authorId,
      ]);
      return rows.length > 0;
    },

    async purgeDeleted(retentionMs) {
      if (!Number.isInteger(retentionMs) || retentionMs < 0)
        throw new RangeError(`retentionMs must be a whole number of at least 0, got ${retentionMs}`);
      return db.transaction(async (tx) => {
        const gone = await tx.query<{ hash: string }>(
          `DELETE FROM images WHERE deleted_at IS NOT NULL AND deleted_at <= now() - $1 * interval '1 millisecond'
           RETURNING hash`,
          [retentionMs],
        );
        await tx.query(
          `DELETE FROM deleted_sources WHERE deleted_at <= now() - $1 * interval '1 millisecond'`,
          [retentionMs],
        );
        // A blob goes with its last image; bytes another image still uses stay.
        const blobs = await tx.query(
          `DELETE FROM blobs b WHERE b.hash = ANY ($1::text[])
             AND NOT EXISTS (SELECT 1 FROM images i WHERE i.hash = b.hash) RETURNING 1`,
          [[...new Set(gone.map((row) => row.hash))]],
        );
        return { images: gone.length, blobs: blobs.length };
      });
    },

    async deleteByAuthor(communityId, authorId) {
      requireRowId(communityId, 'community id');
      const rows = await db.query(
        `UPDATE images SET deleted_at = now()
         WHERE community_id = $1 AND author_id = $2 AND deleted_at IS NULL RETURNING 1`,
        [communityId, authorId],
      );
      return rows.length;
    },
  };
}
