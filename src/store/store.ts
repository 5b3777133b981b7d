import { blobRepository } from './blobs.ts';
import { communityRepository } from './communities.ts';
import { imageRepository } from './images.ts';
import { jobRepository } from './jobs.ts';
import { rateLimitRepository } from './rate-limits.ts';
import type { SqlClient } from './sql-client.ts';
import type { Store } from './types.ts';

/**
 * The Store on any SqlClient (Postgres or PGlite): one repository per table family, each in its own
 * file, all on the same connection.
 */
export function createStore(db: SqlClient): Store {
  return {
    kind: db.kind,
    sql: db,
    communities: communityRepository(db),
    blobs: blobRepository(db),
    images: imageRepository(db),
    jobs: jobRepository(db),
    rateLimits: rateLimitRepository(db),
    close: () => db.close(),
  };
}
