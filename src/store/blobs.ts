import { createHash } from 'node:crypto';
import type { SqlClient } from './sql-client.ts';
import type { Store } from './types.ts';
import { isSha256, requireMime } from './validate.ts';

/** Image bytes, stored once under their sha256 whatever number of images points at them. */
export function blobRepository(db: SqlClient): Store['blobs'] {
  return {
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
      if (!isSha256(hash)) return null;
      const [row] = await db.query<{ bytes: Uint8Array; mime: string }>(
        'SELECT bytes, mime FROM blobs WHERE hash = $1',
        [hash],
      );
      return row ? { bytes: row.bytes, mime: row.mime } : null;
    },
  };
}
