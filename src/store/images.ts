import { foreignKeyViolation, IMAGE_COLUMNS, type ImageRow, optionalText } from './rows.ts';
import type { SqlClient } from './sql-client.ts';
import type { ScoredImage, Store } from './types.ts';
import { isRowId, isSha256, requireMime, requireRowId } from './validate.ts';
import { ensureEmbeddingIndex, nearest, normalisedVector } from './vector-search.ts';

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

    async search(communityId, embedding, k, excludeIds = []) {
      requireRowId(communityId, 'community id');
      return nearest<ImageRow & ScoredImage>(db, IMAGE_COLUMNS, { communityId, embedding, k, excludeIds });
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
      const rows = await db.query(
        `UPDATE images SET deleted_at = now()
         WHERE community_id = $1 AND channel_id = $2 AND message_id = $3 AND deleted_at IS NULL RETURNING 1`,
        [communityId, channelId, messageId],
      );
      return rows.length;
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
