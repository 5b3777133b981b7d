import pgvector from 'pgvector';
import type { Row, SqlClient, SqlQuery } from './sql-client.ts';
import type { ViewerScope } from './types.ts';
import { isRowId } from './validate.ts';

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
 * images, plus the private ones of the viewer's own channel or thread. Two plans answer it:
 * - exact: a community with at most EXACT_SCAN_MAX_ROWS live images is scanned whole (B-tree on
 *   community_id), which is exact and, at that size, faster than the graph walk. A filtered HNSW walk
 *   over a small community is what the index does worst: most of the graph it visits is other rows.
 * - hnsw: larger communities use pgvector 0.8's iterative index scans (Postgres and PGlite both bundle
 *   ≥ 0.8): the scan keeps walking the graph until enough rows pass the filter. Iterative scans stop
 *   after hnsw.max_scan_tuples; when that leaves fewer than k rows (a viewer's filter that admits few of
 *   a large community's rows), the exact search answers instead.
 */

/** pgvector's limit for HNSW on the `vector` type. */
export const MAX_INDEXED_DIM = 2000;

/**
 * Defaults from `npm run bench:store` (100k × 256, clustered): hnsw.ef_search 100 gives recall@10 0.999
 * on a whole table (a community that is most of it), where 40 gives 0.989. Scoped to a community of 10%
 * of the rows, ef_search hardly matters (0.944 to 0.949 from 40 to 200) but over-fetching does: taking
 * 4k index-scan rows and keeping the best k lifts recall@10 to 0.978 at p95 ≈ 14 ms.
 */
export const DEFAULT_EF_SEARCH = 100;
/** Index-scan rows per result kept (see NearestOptions.candidates). */
export const DEFAULT_CANDIDATES = 4;
/** Communities with at most this many live images are searched exactly (see the top of this file). */
export const EXACT_SCAN_MAX_ROWS = 20_000;

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

export type SearchPlan = 'hnsw' | 'exact';

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
  /** Use this plan whatever the community's size (benchmarks compare them). */
  plan?: SearchPlan;
  /** Told which plan answered: 'hnsw', 'exact', or 'hnsw→exact' when the index scan came back short. */
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

/** Whether the community is small enough for the exact plan: counts its live rows, stopping past the limit. */
async function smallCommunity(client: SqlClient, communityId: string): Promise<boolean> {
  const [row] = await client.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM
       (SELECT 1 FROM images WHERE community_id = $1 AND deleted_at IS NULL LIMIT $2) AS live`,
    [communityId, EXACT_SCAN_MAX_ROWS + 1],
  );
  return row!.n <= EXACT_SCAN_MAX_ROWS;
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
    params.push(communityId);
    filters.push(`community_id = $${params.length}`, visibleTo(options.scope, params));
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

  const plan =
    options.plan ??
    (communityId !== undefined && (await smallCommunity(client, communityId)) ? 'exact' : 'hnsw');
  if (plan === 'exact') return exact('exact');
  const ef = Math.min(1000, Math.max(Math.trunc(options.efSearch ?? DEFAULT_EF_SEARCH), candidates)); // pgvector allows 1..1000
  const rows = await client.transaction(async (tx) => {
    await tx.query(`SET LOCAL hnsw.ef_search = ${ef}`);
    await tx.query('SET LOCAL hnsw.iterative_scan = relaxed_order');
    return tx.query<T>(sqlFor(indexedDistance), params);
  });
  if (rows.length >= k || communityId === undefined || options.plan === 'hnsw') {
    options.onPlan?.('hnsw');
    return clean(rows);
  }
  return exact('hnsw→exact');
}

function clean<T extends NearestRow>(rows: T[]): T[] {
  for (const row of rows) {
    delete row.distance;
    row.score = Math.max(-1, Math.min(1, Number(row.score)));
  }
  return rows;
}
