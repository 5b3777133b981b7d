import pgvector from 'pgvector';
import type { Row, SqlClient, SqlQuery } from './sql-client.ts';
import type { ViewerScope } from './types.ts';
import { isRowId, requireRowId } from './validate.ts';

/**
 * Nearest-neighbour search over image embeddings with pgvector.
 *
 * The embedding column has no fixed dimension (any bundle's retrieval dimension fits), and HNSW indexes
 * need one, so each dimension in use gets its own partial expression index, created on first use:
 *   hnsw ((embedding::vector(D)) vector_ip_ops) WHERE vector_dims(embedding) = D AND deleted_at IS NULL
 * Queries repeat that expression and predicate (D inlined as a literal, so the planner can match them).
 * Embeddings are normalised on write and queries before searching, so the inner product is the cosine.
 *
 * Every search is scoped to one community and to what the viewer may see (ImagePlacement): the public
 * images, plus the private ones of the viewer's own channel or thread. The plan depends on the
 * community's size (README, "Scaling: the gallery", has the measurements):
 * - exact: a community with at most EXACT_SCAN_MAX_ROWS live images is scanned whole (B-tree on
 *   community_id): exact, and at that size about as fast as a graph walk. A filtered walk of the shared
 *   graph is what HNSW does worst for a small community: most of what it visits is other rows.
 * - its own index ('community'): on Postgres, a community of more than EXACT_SCAN_MAX_ROWS holding
 *   less than half the table gets a partial HNSW index of its own (built in the background once it
 *   grows past that), so its searches walk its own graph instead of discarding the other communities'
 *   rows. The plan is 'community' once that index is valid;
 *   the SQL is the shared plan's, and the planner picks the partial index because the community's
 *   literal id matches its predicate (bench:store EXPLAINs it).
 * - the shared index otherwise, with pgvector 0.8's iterative scans (Postgres and PGlite both bundle
 *   ≥ 0.8): the scan keeps walking until enough rows pass the filter. Iterative scans stop after
 *   hnsw.max_scan_tuples; when that leaves fewer than k rows (a viewer's filter that admits few of a
 *   large community's rows), the exact search answers instead.
 * The community id is inlined as a literal so that the planner can match the partial index.
 */

/** pgvector's limit for HNSW on the `vector` type. */
export const MAX_INDEXED_DIM = 2000;

/**
 * hnsw.ef_search, on the shared index and on a community's own. From `npm run bench:store` (README,
 * "Scaling: the gallery"): at 1M × 256 clustered rows, 100 gave recall@10 0.910–0.965 over the whole
 * table depending on the build (random levels), 200 gives 0.979 there and 0.982 in a community of 90% of
 * it, at p95 11 ms; on a 10% community's own index 0.998. One value for both, so that every search runs
 * at the connection's setting. Taking 4k index-scan rows and keeping the best k recovers neighbours
 * relaxed_order returns late.
 */
export const DEFAULT_EF_SEARCH = 200;
/**
 * What the store's connections start with (connect.ts), so that a search at these settings is one
 * statement, not a transaction of five (BEGIN, two SET LOCAL, the query, COMMIT): each round trip is a
 * wake-up of both processes on a busy machine. A search at any other ef_search sets it for itself.
 */
export const SEARCH_SESSION_SETTINGS: Readonly<Record<string, string>> = {
  'hnsw.ef_search': String(DEFAULT_EF_SEARCH),
  'hnsw.iterative_scan': 'relaxed_order',
};
/** Index-scan rows per result kept (see NearestOptions.candidates). */
export const DEFAULT_CANDIDATES = 4;
/**
 * Communities with at most this many live images are searched exactly (see the top of this file); larger
 * ones holding less than half the table get their own index. On the shared index a community of 2% of a
 * million images searched at p95 60 ms and recall@10 0.935, its filtered walk discarding 98% of what it
 * visits (README).
 */
export const EXACT_SCAN_MAX_ROWS = 5_000;

export function indexName(dim: number): string {
  return `images_embedding_ip_${dim}`;
}

/** Checks an embedding and returns it as pgvector text, scaled to unit length. */
export function normalisedVector(embedding: ArrayLike<number>, what = 'embedding'): string {
  const dim = embedding.length;
  if (!Number.isInteger(dim) || dim < 1 || dim > MAX_INDEXED_DIM) {
    throw new RangeError(`${what} must have 1 to ${MAX_INDEXED_DIM} dimensions, got ${dim}`);
  }
  let sumSq = 0;
  for (let i = 0; i < dim; i++) {
    const v = embedding[i]!;
    if (!Number.isFinite(v)) throw new RangeError(`${what} has a non-finite value at index ${i}`);
    sumSq += v * v;
  }
  if (sumSq === 0) throw new RangeError(`${what} is all zeros and has no direction`);
  const norm = Math.sqrt(sumSq);
  const unit = new Array<number>(dim);
  for (let i = 0; i < dim; i++) unit[i] = embedding[i]! / norm;
  return pgvector.toSql(unit);
}

/** Advisory lock key serialising index creation across processes. */
const INDEX_LOCK = 7_201_511_338;

/** Creates the HNSW index for one dimension if it is missing. Safe to call concurrently. */
export async function ensureEmbeddingIndex(client: SqlClient, dim: number): Promise<boolean> {
  if (!Number.isInteger(dim) || dim < 1 || dim > MAX_INDEXED_DIM)
    throw new RangeError(`bad dimension ${dim}`);
  const name = indexName(dim);
  const exists = async (q: SqlQuery) =>
    (await q.query<{ found: string | null }>('SELECT to_regclass($1)::text AS found', [name]))[0]?.found !=
    null;
  if (await exists(client)) return false;
  return client.transaction(async (tx) => {
    await tx.query('SELECT pg_advisory_xact_lock($1)', [INDEX_LOCK]);
    if (await exists(tx)) return false;
    await tx.exec(
      `CREATE INDEX ${name} ON images USING hnsw ((embedding::vector(${dim})) vector_ip_ops)
       WHERE vector_dims(embedding) = ${dim} AND deleted_at IS NULL`,
    );
    return true;
  });
}

/** 'community': the shared index's query, which the planner answers from the community's own index. */
export type SearchPlan = 'hnsw' | 'community' | 'exact';

export interface NearestOptions {
  /** Omit to search every image of every community, unfiltered (benchmarks only). */
  communityId?: string;
  /** Where the viewer is; absent, only public images. Applies with communityId. */
  scope?: ViewerScope;
  embedding: ArrayLike<number>;
  k: number;
  excludeIds?: string[];
  efSearch?: number;
  /**
   * Rows the index scan returns before the final re-sort keeps the best k. relaxed_order emits rows
   * slightly out of order, so taking more than k and re-sorting recovers near neighbours found late.
   */
  candidates?: number;
  /** The plan, as the store's planner chose it or a benchmark forces it; by default counted now. */
  plan?: SearchPlan;
  /** A benchmark's forced plan: no exact search when the index scan comes back short. */
  forced?: boolean;
  /** Told which plan answered: the plan, or 'hnsw→exact' when the index scan came back short. */
  onPlan?: (plan: string) => void;
}

export interface NearestRow extends Row {
  id: string;
  score: number;
}

/** The viewer's filter: public images, and the private ones of the viewer's channel or thread. */
function visibleTo(scope: ViewerScope | undefined, params: unknown[]): string {
  if (scope === undefined) return "visibility = 'public'";
  const { channelId, threadId = null } = scope;
  if (typeof channelId !== 'string' || channelId.length < 1 || channelId.length > 200)
    throw new RangeError(`scope.channelId must be 1 to 200 characters, got "${channelId}"`);
  if (threadId !== null && (typeof threadId !== 'string' || threadId.length < 1 || threadId.length > 200))
    throw new RangeError(`scope.threadId must be null or 1 to 200 characters, got "${threadId}"`);
  params.push(channelId, threadId);
  const [channel, thread] = [params.length - 1, params.length];
  return `(visibility = 'public' OR (channel_id = $${channel} AND (thread_id IS NULL OR thread_id = $${thread}::text)))`;
}

/** The name of one community's own HNSW index for one dimension. */
export function communityIndexName(dim: number, communityId: string): string {
  return `${indexName(dim)}_c${communityId}`;
}

/**
 * Builds one community's own HNSW index if it is missing (Postgres only: PGlite would stall every query
 * for the minutes a build takes). CONCURRENTLY, so images are written meanwhile; a failed build leaves an
 * invalid index, dropped here so that the next call builds it again. Returns whether it built one.
 */
export async function ensureCommunityIndex(
  client: SqlClient,
  dim: number,
  communityId: string,
): Promise<boolean> {
  if (!Number.isInteger(dim) || dim < 1 || dim > MAX_INDEXED_DIM)
    throw new RangeError(`bad dimension ${dim}`);
  requireRowId(communityId, 'community id');
  const name = communityIndexName(dim, communityId);
  const [state] = await client.query<{ valid: boolean; building: boolean }>(
    `SELECT i.indisvalid AS valid,
       EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid) AS building
     FROM pg_index i WHERE i.indexrelid = to_regclass($1)`,
    [name],
  );
  if (state?.valid || state?.building) return false;
  if (state) await client.exec(`DROP INDEX CONCURRENTLY IF EXISTS ${name}`);
  await client.exec(
    `CREATE INDEX CONCURRENTLY IF NOT EXISTS ${name} ON images USING hnsw ((embedding::vector(${dim})) vector_ip_ops)
     WHERE vector_dims(embedding) = ${dim} AND deleted_at IS NULL AND community_id = ${communityId}`,
  );
  return true;
}

/** Counts a community's live images, stopping past `limit`: classifying a large one costs no more. */
async function liveImages(client: SqlClient, communityId: string, limit: number): Promise<number> {
  const [row] = await client.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM
       (SELECT 1 FROM images WHERE community_id = $1 AND deleted_at IS NULL LIMIT $2) AS live`,
    [communityId, limit + 1],
  );
  return row!.n;
}

/** The plan for a community's search: exact when it has at most EXACT_SCAN_MAX_ROWS live images. */
async function planFor(client: SqlClient, communityId: string): Promise<SearchPlan> {
  return (await liveImages(client, communityId, EXACT_SCAN_MAX_ROWS)) <= EXACT_SCAN_MAX_ROWS
    ? 'exact'
    : 'hnsw';
}

/**
 * Whether a community should have its own index: on Postgres, too large for the exact scan and less than
 * half of the table: in its own graph a community's search walks only its own images, where the shared
 * graph's filtered walk discards the others'.
 */
export async function wantsOwnIndex(client: SqlClient, communityId: string): Promise<boolean> {
  return (
    client.kind === 'postgres' &&
    (await planFor(client, communityId)) === 'hnsw' &&
    (await holdsUnderHalf(client, communityId))
  );
}

/** Whether a community holds less than half of the live images (a 1% sample of the table's pages). */
async function holdsUnderHalf(client: SqlClient, communityId: string): Promise<boolean> {
  const [sample] = await client.query<{ share: number | null }>(
    `SELECT (count(*) FILTER (WHERE community_id = $1))::float8 / NULLIF(count(*), 0) AS share
     FROM images TABLESAMPLE SYSTEM (1) WHERE deleted_at IS NULL`,
    [communityId],
  );
  return sample?.share != null && sample.share < 0.5;
}

/** Whether the community's own index for `dim` exists and is built (never on PGlite). */
async function hasOwnIndex(client: SqlClient, dim: number, communityId: string): Promise<boolean> {
  if (client.kind !== 'postgres') return false;
  const [row] = await client.query<{ valid: boolean }>(
    'SELECT indisvalid AS valid FROM pg_index WHERE indexrelid = to_regclass($1)',
    [communityIndexName(dim, requireRowId(communityId, 'community id'))],
  );
  return row?.valid === true;
}

/**
 * planFor, remembered per community for ttlMs: the count costs about as much as a search on PGlite,
 * and a community's size changes slowly. A stale plan is only slower, never wrong: both plans are exact
 * about who may see what, and a short index scan falls back to the exact one. On each count of a large
 * community it also starts building the community's own index when it should have one (in the
 * background: the search goes on with the shared index; a failed build is tried again a ttl later).
 */
export function planner(
  client: SqlClient,
  ttlMs = 60_000,
): (communityId: string, dim: number) => Promise<SearchPlan> {
  const known = new Map<string, { plan: SearchPlan; until: number }>();
  return async (communityId, dim) => {
    const now = Date.now();
    const key = `${communityId}:${dim}`;
    const cached = known.get(key);
    if (cached && cached.until > now) return cached.plan;
    let plan = await planFor(client, communityId);
    if (plan === 'hnsw' && (await hasOwnIndex(client, dim, communityId))) plan = 'community';
    known.set(key, { plan, until: now + ttlMs });
    if (plan === 'hnsw' && client.kind === 'postgres') {
      // Already counted past EXACT_SCAN_MAX_ROWS: only the share is left of wantsOwnIndex.
      void holdsUnderHalf(client, communityId)
        .then((wanted) => wanted && ensureCommunityIndex(client, dim, communityId))
        .catch(() => {});
    }
    return plan;
  };
}

/**
 * The k most similar images (cosine, best first) the viewer may see, with `columns` selected from
 * `images`. Ids in excludeIds that are not image ids are ignored (they cannot match a row).
 */
export async function nearest<T extends NearestRow>(
  client: SqlClient,
  columns: string,
  options: NearestOptions,
): Promise<T[]> {
  const { k, communityId } = options;
  if (!Number.isInteger(k) || k < 1 || k > 1000)
    throw new RangeError(`k must be a whole number from 1 to 1000, got ${k}`);
  const dim = options.embedding.length;
  const query = normalisedVector(options.embedding, 'query embedding');
  const exclude = (options.excludeIds ?? []).filter(isRowId);
  const candidates = Math.max(k, Math.min(1000, Math.trunc(options.candidates ?? DEFAULT_CANDIDATES * k)));
  const params: unknown[] = [query, exclude, candidates, k];
  const filters = [`vector_dims(embedding) = ${dim}`, 'deleted_at IS NULL', 'id <> ALL ($2::bigint[])'];
  if (communityId !== undefined) {
    // A literal, not a parameter, so the planner can match the community's own partial index.
    filters.push(
      `community_id = ${requireRowId(communityId, 'community id')}`,
      visibleTo(options.scope, params),
    );
  }
  // The indexed expression (a cast to vector(D)) makes the planner use the HNSW index; the exact search
  // orders by the uncast column, which no index matches, so it scans the community's rows.
  const exactDistance = 'embedding <#> $1::text::vector';
  const indexedDistance = `embedding::vector(${dim}) <#> $1::text::vector(${dim})`;
  // relaxed_order may return rows slightly out of order: the outer query re-sorts the materialised set.
  const sqlFor = (distance: string) => `WITH candidates AS MATERIALIZED (
      SELECT ${columns}, ${distance} AS distance FROM images
      WHERE ${filters.join(' AND ')}
      ORDER BY ${distance} LIMIT $3)
    SELECT *, -distance AS score FROM candidates ORDER BY distance LIMIT $4`;
  const exact = async (plan: string) => {
    options.onPlan?.(plan);
    return clean(await client.query<T>(sqlFor(exactDistance), params));
  };

  const plan = options.plan ?? (communityId === undefined ? 'hnsw' : await planFor(client, communityId));
  if (plan === 'exact') return exact('exact');
  const ef = Math.min(1000, Math.max(Math.trunc(options.efSearch ?? DEFAULT_EF_SEARCH), candidates)); // pgvector allows 1..1000
  const session = client.sessionSettings;
  const rows =
    session['hnsw.ef_search'] === String(ef) &&
    session['hnsw.iterative_scan'] === SEARCH_SESSION_SETTINGS['hnsw.iterative_scan']
      ? await client.query<T>(sqlFor(indexedDistance), params)
      : await client.transaction(async (tx) => {
          await tx.query(`SET LOCAL hnsw.ef_search = ${ef}`);
          await tx.query('SET LOCAL hnsw.iterative_scan = relaxed_order');
          return tx.query<T>(sqlFor(indexedDistance), params);
        });
  if (rows.length >= k || communityId === undefined || options.forced) {
    options.onPlan?.(plan);
    return clean(rows);
  }
  return exact(`${plan}→exact`);
}

function clean<T extends NearestRow>(rows: T[]): T[] {
  for (const row of rows) {
    delete row.distance;
    row.score = Math.max(-1, Math.min(1, Number(row.score)));
  }
  return rows;
}
