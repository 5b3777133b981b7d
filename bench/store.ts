/**
 * Vector search benchmark: `npm run bench:store -- [--n 100000] [--dim 256] [--queries 200]
 * [--db pg|pglite] [--ef 40,100,200] [--fetch 1,4] [--url postgres://...] [--keep] [--reuse gill_bench_x]`.
 * --fetch: index-scan rows per result, re-sorted before keeping k; --keep/--reuse skip reloading.
 *
 * Loads N unit embeddings drawn from a mixture of about N/50 clusters whose within-cluster spread is
 * half the between-cluster spread (the structure of real image embeddings; uniform random vectors are a
 * worst case no index meets), builds the store's HNSW index, then times top-10 queries drawn fresh from
 * the same mixture through the store's own search code, and measures recall@10 against exact search:
 * unfiltered, and filtered to a community holding 10% of the rows. Prints a table, then one JSON line.
 * Postgres runs in a new database that is dropped afterwards (unless --keep). One query at a time and
 * no parallel index build, so it keeps to about one core.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { migrate } from '../src/store/migrations.ts';
import { pgliteClient, postgresClient, type Row, type SqlClient, type SqlQuery } from '../src/store/sql-client.ts';
import { createStore } from '../src/store/store.ts';
import { ensureEmbeddingIndex, indexName, nearest } from '../src/store/vector-search.ts';

const { values: args } = parseArgs({
  options: {
    n: { type: 'string', default: '100000' },
    dim: { type: 'string', default: '256' },
    queries: { type: 'string', default: '200' },
    db: { type: 'string', default: 'pg' },
    ef: { type: 'string', default: '40,100,200' },
    url: { type: 'string' },
    seed: { type: 'string', default: '1' },
    fetch: { type: 'string', default: '1,4' },
    keep: { type: 'boolean', default: false },
    reuse: { type: 'string' },
  },
});

function positiveInt(name: string, value: string, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > max) throw new Error(`--${name} must be a whole number from 1 to ${max}`);
  return n;
}

const N = positiveInt('n', args.n, 10_000_000);
const DIM = positiveInt('dim', args.dim, 2000);
const QUERIES = positiveInt('queries', args.queries, 100_000);
const EFS = args.ef.split(',').map((v) => positiveInt('ef', v.trim(), 1000));
const FETCH = args.fetch.split(',').map((v) => positiveInt('fetch', v.trim(), 100));
const K = 10;
const FILTERED_FRACTION = 0.1;
const CLUSTERS = Math.max(1, Math.round(N / 50));
if (args.db !== 'pg' && args.db !== 'pglite') throw new Error('--db must be pg or pglite');

// Seeded generator (mulberry32) and Gaussian draws (Box-Muller), so runs are comparable.
let state = positiveInt('seed', args.seed, 2 ** 31) >>> 0;
function uniform(): number {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
}
function gaussian(): number {
  return Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
}

/** Cluster centres with per-component spread 1/√dim (norm ≈ 1); points spread half that around them. */
const centres = new Float32Array(CLUSTERS * DIM);
for (let i = 0; i < centres.length; i++) centres[i] = gaussian() / Math.sqrt(DIM);

function drawPoint(out: Float32Array, offset: number): void {
  const c = Math.floor(uniform() * CLUSTERS) * DIM;
  let norm = 0;
  for (let d = 0; d < DIM; d++) {
    const v = centres[c + d]! + (0.5 * gaussian()) / Math.sqrt(DIM);
    out[offset + d] = v;
    norm += v * v;
  }
  norm = Math.sqrt(norm);
  for (let d = 0; d < DIM; d++) out[offset + d]! /= norm;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

const round = (v: number, digits = 2) => Number(v.toFixed(digits));

async function openBenchDatabase(): Promise<{ client: SqlClient; where: string; cleanup(): Promise<void> }> {
  if (args.db === 'pglite') {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'gill-bench-'));
    return {
      client: await pgliteClient(path.join(dir, 'pglite')),
      where: `PGlite in ${dir}`,
      cleanup: () => (args.keep ? Promise.resolve() : rm(dir, { recursive: true, force: true })),
    };
  }
  const base = args.url ?? process.env.DATABASE_URL ?? process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
  const name = args.reuse ?? `gill_bench_${Date.now().toString(36)}`;
  if (!/^gill_bench_\w+$/.test(name)) throw new Error('--reuse takes a gill_bench_* database kept by --keep');
  const admin = async (sql: string) => {
    const c = new pg.Client({ connectionString: base });
    await c.connect();
    try {
      await c.query(sql);
    } finally {
      await c.end();
    }
  };
  if (!args.reuse) await admin(`CREATE DATABASE ${name}`);
  // Enough memory for the graph to be built in memory; no parallel build workers (shared machine).
  const indexMemoryMb = Math.max(256, Math.ceil((N * DIM * 4 * 2.5) / 2 ** 20));
  await admin(`ALTER DATABASE ${name} SET maintenance_work_mem = '${indexMemoryMb}MB'`);
  await admin(`ALTER DATABASE ${name} SET max_parallel_maintenance_workers = 0`);
  const url = new URL(base);
  url.pathname = `/${name}`;
  const client = postgresClient(url.toString(), { max: 2 });
  return {
    client,
    where: `Postgres ${url.hostname}:${url.port || 5432}/${name}`,
    async cleanup() {
      await client.close();
      if (args.keep) process.stderr.write(`kept database ${name} (rerun with --reuse ${name})\n`);
      else await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

async function main() {
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const db = await openBenchDatabase();
  try {
    await migrate(db.client);
    const [{ version } = { version: '?' }] = await db.client.query<{ version: string }>(
      "SELECT extversion AS version FROM pg_extension WHERE extname = 'vector'",
    );
    log(`store bench: ${db.where}, pgvector ${version}, N=${N}, dim=${DIM}, ${CLUSTERS} clusters, ${QUERIES} queries`);

    const store = createStore(db.client);
    const filtered = (await store.communities.ensure({ platform: 'cli', externalId: 'bench-10pct' })).id;
    const rest = (await store.communities.ensure({ platform: 'cli', externalId: 'bench-rest' })).id;
    const hash = await store.blobs.put(new Uint8Array([0]), 'image/png');
    const [{ n: stored } = { n: 0 }] = await db.client.query<{ n: number }>('SELECT count(*)::int AS n FROM images');
    if (args.reuse && stored !== N) throw new Error(`--reuse: the database holds ${stored} images, not --n ${N}`);

    // Load in multi-row batches (one INSERT ... SELECT FROM unnest per batch).
    const vectors = new Float32Array(N * DIM);
    const inFiltered = new Uint8Array(N);
    const loadStart = performance.now();
    const BATCH = 1000;
    for (let start = 0; start < N; start += BATCH) {
      const end = Math.min(N, start + BATCH);
      const communities: string[] = [];
      const names: string[] = [];
      const texts: string[] = [];
      for (let i = start; i < end; i++) {
        drawPoint(vectors, i * DIM);
        inFiltered[i] = uniform() < FILTERED_FRACTION ? 1 : 0;
        communities.push(inFiltered[i] ? filtered : rest);
        names.push(String(i));
        texts.push(`[${vectors.subarray(i * DIM, (i + 1) * DIM).join(',')}]`);
      }
      if (args.reuse) continue; // same seed, same vectors: only the JS copy is rebuilt
      await db.client.query(
        `INSERT INTO images (community_id, hash, mime, width, height, message_id, embedding)
         SELECT c, $1, 'image/png', 1, 1, m, e::vector FROM unnest($2::bigint[], $3::text[], $4::text[]) AS t(c, m, e)`,
        [hash, communities, names, texts],
      );
      if ((end / BATCH) % 20 === 0) log(`  loaded ${end}`);
    }
    const loadSeconds = (performance.now() - loadStart) / 1000;
    const indexStart = performance.now();
    await ensureEmbeddingIndex(db.client, DIM);
    const indexSeconds = (performance.now() - indexStart) / 1000;
    await db.client.exec('ANALYZE images');
    log(`  load ${round(loadSeconds, 1)} s, HNSW build ${round(indexSeconds, 1)} s`);

    // Fresh queries from the same mixture, and their exact top-k by brute force.
    const queries = new Float32Array(QUERIES * DIM);
    for (let q = 0; q < QUERIES; q++) drawPoint(queries, q * DIM);
    const truth = (q: number, onlyFiltered: boolean): Set<string> => {
      const best: { i: number; s: number }[] = [];
      const query = queries.subarray(q * DIM, (q + 1) * DIM);
      for (let i = 0; i < N; i++) {
        if (onlyFiltered && !inFiltered[i]) continue;
        let s = 0;
        const o = i * DIM;
        for (let d = 0; d < DIM; d++) s += query[d]! * vectors[o + d]!;
        if (best.length < K || s > best[K - 1]!.s) {
          best.push({ i, s });
          best.sort((a, b) => b.s - a.s);
          if (best.length > K) best.pop();
        }
      }
      return new Set(best.map((b) => String(b.i)));
    };
    const truthAll = Array.from({ length: QUERIES }, (_, q) => truth(q, false));
    const truthFiltered = Array.from({ length: QUERIES }, (_, q) => truth(q, true));

    /** The same client, but search statements are EXPLAINed: tells whether a run's plan uses HNSW. */
    let plan = '';
    const explaining = (tx: SqlQuery): SqlQuery => ({
      exec: (sql) => tx.exec(sql),
      async query<T extends Row>(text: string, params?: unknown[]) {
        if (!text.trimStart().startsWith('WITH candidates')) return tx.query<T>(text, params);
        const rows = await tx.query(`EXPLAIN ${text}`, params);
        plan ||= rows.map((r) => Object.values(r).join(' ')).join('\n'); // the index scan, not a fallback
        return [] as T[];
      },
    });
    const explainClient: SqlClient = {
      ...db.client,
      ...explaining(db.client),
      transaction: (fn) => db.client.transaction((tx) => fn(explaining(tx))),
    };

    const results: Record<string, unknown>[] = [];
    const run = async (label: string, ef: number | null, fetch: number, communityId?: string) => {
      const expected = communityId ? truthFiltered : truthAll;
      let fallbacks = 0;
      const options = (q: number) => ({
        communityId,
        embedding: queries.subarray(q * DIM, (q + 1) * DIM),
        k: K,
        efSearch: ef ?? undefined,
        exact: ef === null,
        candidates: fetch * K,
        onExactFallback: () => fallbacks++,
      });
      const search = (q: number) =>
        nearest<{ id: string; score: number; message_id: string }>(db.client, 'message_id', options(q));
      for (let q = 0; q < Math.min(20, QUERIES); q++) await search(q); // warm caches
      fallbacks = 0;
      const times: number[] = [];
      let hits = 0;
      for (let q = 0; q < QUERIES; q++) {
        const t = performance.now();
        const rows = await search(q);
        times.push(performance.now() - t);
        hits += rows.filter((r) => expected[q]!.has(r.message_id)).length;
      }
      times.sort((a, b) => a - b);
      plan = '';
      await nearest(explainClient, 'message_id', { ...options(0), onExactFallback: undefined });
      const plannedIndex = plan.includes(indexName(DIM)) ? 'hnsw' : 'exact';
      const row = {
        filter: communityId ? '10%' : 'none',
        ef: ef ?? 'exact',
        candidates: fetch * K,
        p50Ms: round(percentile(times, 50)),
        p95Ms: round(percentile(times, 95)),
        recallAt10: round(hits / (QUERIES * K), 4),
        exactFallbacks: fallbacks,
        plan: plannedIndex,
      };
      results.push(row);
      log(
        `  ${label.padEnd(22)} ef=${String(row.ef).padEnd(5)} fetch ${String(row.candidates).padEnd(4)} p50 ${String(row.p50Ms).padStart(7)} ms  ` +
          `p95 ${String(row.p95Ms).padStart(7)} ms  recall@10 ${row.recallAt10.toFixed(3)}  fallbacks ${fallbacks}  plan ${plannedIndex}`,
      );
    };

    for (const ef of EFS) {
      for (const fetch of FETCH) {
        await run('unfiltered', ef, fetch);
        await run('filtered to 10%', ef, fetch, filtered);
      }
    }
    await run('filtered, exact scan', null, 1, filtered);

    console.log(
      JSON.stringify({
        bench: 'store',
        db: args.db,
        pgvector: version,
        n: N,
        dim: DIM,
        clusters: CLUSTERS,
        queries: QUERIES,
        k: K,
        filteredFraction: FILTERED_FRACTION,
        loadSeconds: round(loadSeconds, 1),
        indexSeconds: round(indexSeconds, 1),
        results,
      }),
    );
  } finally {
    await db.cleanup();
  }
}

await main();
