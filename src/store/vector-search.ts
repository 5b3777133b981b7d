import pgvector from 'pgvector';
import type { Row, SqlClient, SqlQuery } from './sql-client.ts';
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
 * Search scoped to one community uses pgvector 0.8's iterative index scans (Postgres and PGlite both
 * bundle ≥ 0.8): the scan keeps walking the graph until k rows pass the community filter, so a community
 * holding a small fraction of the table still gets k results. Iterative scans stop after
 * hnsw.max_scan_tuples; when that leaves fewer than k rows (a community too small for the graph walk to
 * reach), an exact search over the community's rows (B-tree on community_id) completes the answer.
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

export interface NearestOptions {
  /** Omit to search every community (benchmarks only: the store always scopes by community). */
  communityId?: string;
  embedding: ArrayLike<number>;
  k: number;
  excludeIds?: string[];
  efSearch?: number;
  /** Skip the index and scan exactly (benchmarks' ground truth, and the small-community fallback). */
  exact?: boolean;
  /**
   * Rows the index scan returns before the final re-sort keeps the best k. relaxed_order emits rows
   * slightly out of order, so taking more than k and re-sorting recovers near neighbours found late.
   */
  candidates?: number;
  /** Called when the index scan came back short and the exact search answered instead (benchmarks count it). */
  onExactFallback?: () => void;
}

export interface NearestRow extends Row {
  id: string;
  score: number;
}

/**
 * The k most similar live images (cosine, best first), with `columns` selected from `images`.
 * Ids in excludeIds that are not image ids are ignored (they cannot match a row).
 */
export async function nearest<T extends NearestRow>(
  client: SqlClient,
  columns: string,
  options: NearestOptions,
): Promise<T[]> {
  const { k } = options;
  if (!Number.isInteger(k) || k < 1 || k > 1000)
    throw new RangeError(`k must be a whole number from 1 to 1000, got ${k}`);
  const dim = options.embedding.length;
  const query = normalisedVector(options.embedding, 'query embedding');
  const exclude = (options.excludeIds ?? []).filter(isRowId);
  const candidates = Math.max(k, Math.min(1000, Math.trunc(options.candidates ?? DEFAULT_CANDIDATES * k)));
  const params: unknown[] = [query, exclude, candidates, k];
  const filters = [`vector_dims(embedding) = ${dim}`, 'deleted_at IS NULL', 'id <> ALL ($2::bigint[])'];
  if (options.communityId !== undefined) {
    params.push(options.communityId);
    filters.push(`community_id = $${params.length}`);
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
  if (options.exact) return clean(await client.query<T>(sqlFor(exactDistance), params));
  const ef = Math.min(1000, Math.max(Math.trunc(options.efSearch ?? DEFAULT_EF_SEARCH), candidates)); // pgvector allows 1..1000
  const rows = await client.transaction(async (tx) => {
    await tx.query(`SET LOCAL hnsw.ef_search = ${ef}`);
    await tx.query('SET LOCAL hnsw.iterative_scan = relaxed_order');
    return tx.query<T>(sqlFor(indexedDistance), params);
  });
  if (rows.length >= k || options.communityId === undefined) return clean(rows);
  options.onExactFallback?.();
  return clean(await client.query<T>(sqlFor(exactDistance), params));
}

function clean<T extends NearestRow>(rows: T[]): T[] {
  for (const row of rows) {
    delete row.distance;
    row.score = Math.max(-1, Math.min(1, Number(row.score)));
  }
  return rows;
}
