/**
 * Gallery search benchmark: `npm run bench:store -- [--rows 100000] [--dim 256] [--queries 200]
 * [--db pg|pglite] [--url postgres://...] [--keep] [--build-only] [--reuse gill_bench_x] [--sweep]`.
 * --keep keeps the Postgres database, --build-only stops after loading and indexing (implies --keep),
 * --reuse measures queries on a kept database without reloading it (and keeps it); --sweep adds forced-index and
 * forced-exact runs beside the store's own choice, for every case; --only <text> runs the cases whose
 * label contains it; --ef and --fetch override hnsw.ef_search and the index-scan rows per result;
 * --server-dir DIR [--shared-buffers 4GB] [--huge-pages try] runs it on a Postgres cluster of its own in DIR (see ownServer).
 *
 * Loads `rows` unit embeddings drawn from a mixture of about rows/50 Gaussian clusters ("topics") on the
 * sphere, the within-cluster spread half the between-cluster spread (the structure of real image
 * embeddings; uniform random vectors are a worst case no index meets). Rows fall into four communities
 * (87.9%, 10%, 2%, 0.1% of rows), each posting 80% about topics of its own and 20% about topics common to
 * all (README, "Scaling: the gallery"); 5% of each community's rows are private, in one of two private
 * channels or one of two private threads. Then times top-10 queries, drawn fresh from the searching
 * community's own mixture (the whole gallery's for unfiltered ones and for the off-topic stress row),
 * through the store's own search (src/store/vector-search.ts), and measures recall@10 against exact
 * search with the same filter computed here by brute force: unfiltered, each community as seen from a
 * public channel, and viewers inside a private channel (10% community) and a private thread (0.1%
 * community). Prints a table, then one JSON line. One query at a time.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import pg from 'pg';
import { migrate } from '../src/store/migrations.ts';
import { pgliteClient, postgresClient, type Row, type SqlClient, type SqlQuery } from '../src/store/sql-client.ts';
import { createStore } from '../src/store/store.ts';
import type { ViewerScope } from '../src/store/types.ts';
import {
  communityIndexName,
  DEFAULT_CANDIDATES,
  DEFAULT_EF_SEARCH,
  ensureEmbeddingIndex,
  indexName,
  nearest,
  planner,
  SEARCH_SESSION_SETTINGS,
  type SearchPlan,
  ensureCommunityIndex,
  wantsOwnIndex,
} from '../src/store/vector-search.ts';

const { values: args } = parseArgs({
  options: {
    rows: { type: 'string', default: '100000' },
    dim: { type: 'string', default: '256' },
    queries: { type: 'string', default: '200' },
    db: { type: 'string', default: 'pg' },
    url: { type: 'string' },
    seed: { type: 'string', default: '1' },
    keep: { type: 'boolean', default: false },
    'build-only': { type: 'boolean', default: false },
    reuse: { type: 'string' },
    sweep: { type: 'boolean', default: false },
    only: { type: 'string' },
    ef: { type: 'string' },
    fetch: { type: 'string' },
    'server-dir': { type: 'string' },
    'shared-buffers': { type: 'string', default: '4GB' },
    'huge-pages': { type: 'string', default: 'try' },
  },
});

function positiveInt(name: string, value: string, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > max) throw new Error(`--${name} must be a whole number from 1 to ${max}`);
  return n;
}

const N = positiveInt('rows', args.rows, 10_000_000);
const DIM = positiveInt('dim', args.dim, 2000);
const QUERIES = positiveInt('queries', args.queries, 100_000);
const K = 10;
/** Overrides of the store's hnsw.ef_search and index-scan rows per result, for tuning them. */
const EF = args.ef === undefined ? undefined : positiveInt('ef', args.ef, 1000);
const FETCH = args.fetch === undefined ? undefined : positiveInt('fetch', args.fetch, 100);
const CLUSTERS = Math.max(1, Math.round(N / 50));
/** The store's connection settings, with --ef in place of its ef_search: a search is one statement either way. */
const SESSION_SETTINGS = { ...SEARCH_SESSION_SETTINGS, ...(EF && { 'hnsw.ef_search': String(EF) }) };
/** The bench's pool, kept open throughout as the store keeps its own (connect.ts). */
const CONNECTIONS = 2;
const BIG_FRACTION = 0.1;
/** Between the exact scan's limit and the 10% community: the size a filtered walk of the shared index does worst. */
const MID_FRACTION = 0.02;
const SMALL_FRACTION = 0.001;
const PRIVATE_FRACTION = 0.05;
const KEEP = args.keep || args['build-only'] || args.reuse !== undefined;
if (args.db !== 'pg' && args.db !== 'pglite') throw new Error('--db must be pg or pglite');
if (args.db === 'pglite' && (KEEP || args.reuse)) throw new Error('--keep, --build-only and --reuse are for --db pg');

// Seeded generator (mulberry32) and Gaussian draws (Box-Muller), so runs are comparable and --reuse
// regenerates exactly the rows it loaded.
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

/** Draws a point of `cluster` into out at offset, rounded as the load sends it (6 significant digits). */
function drawPoint(out: Float32Array, offset: number, cluster: number): void {
  const c = cluster * DIM;
  let norm = 0;
  for (let d = 0; d < DIM; d++) {
    const v = centres[c + d]! + (0.5 * gaussian()) / Math.sqrt(DIM);
    out[offset + d] = v;
    norm += v * v;
  }
  norm = Math.sqrt(norm);
  for (let d = 0; d < DIM; d++) out[offset + d] = Number((out[offset + d]! / norm).toPrecision(6));
}

const REST = 0;
const BIG = 1;
const SMALL = 2;
const MID = 3;
/**
 * Topics: the first SHARED_CLUSTERS_FRACTION of the clusters are common to every community (what
 * everyone posts: memes, pets, food); the rest are split among the communities in proportion to their
 * size, each community's own topics. A community draws SHARED_ROWS_FRACTION of its images from the
 * common clusters and the rest from its own, so at 1M rows every cluster holds about 40–100 images.
 */
const SHARED_CLUSTERS_FRACTION = 0.1;
const SHARED_ROWS_FRACTION = 0.2;
const sharedClusters = Math.max(1, Math.round(CLUSTERS * SHARED_CLUSTERS_FRACTION));
const ownClusters: [number, number][] = [];
{
  const small = Math.max(1, Math.round(CLUSTERS * SMALL_FRACTION));
  const big = Math.max(1, Math.round(CLUSTERS * BIG_FRACTION));
  const mid = Math.max(1, Math.round(CLUSTERS * MID_FRACTION));
  ownClusters[SMALL] = [sharedClusters, small];
  ownClusters[BIG] = [sharedClusters + small, big];
  ownClusters[MID] = [sharedClusters + small + big, mid];
  const taken = sharedClusters + small + big + mid;
  ownClusters[REST] = [taken, Math.max(1, CLUSTERS - taken)];
}
/** Who a query comes from: a community (its own distribution), or anyone (the whole gallery's). */
type Source = typeof REST | typeof BIG | typeof MID | typeof SMALL | 'anyone';
function drawCommunity(): number {
  const u = uniform();
  if (u < SMALL_FRACTION) return SMALL;
  if (u < SMALL_FRACTION + BIG_FRACTION) return BIG;
  return u < SMALL_FRACTION + BIG_FRACTION + MID_FRACTION ? MID : REST;
}
function drawCluster(from: number): number {
  if (uniform() < SHARED_ROWS_FRACTION) return Math.floor(uniform() * sharedClusters);
  const [first, count] = ownClusters[from]!;
  return Math.min(CLUSTERS - 1, first + Math.floor(uniform() * count));
}

/**
 * Where row i was posted: its community, whether it is private, and its place 0–3. Public rows are in
 * channel general-<place>. Private rows of places 0 and 1 are in channel private-<place>; of places 2
 * and 3 in thread secret-<place> under general-<place>.
 */
const community = new Uint8Array(N);
const isPrivate = new Uint8Array(N);
const place = new Uint8Array(N);
const vectors = new Float32Array(N * DIM);
/** Each row's cluster, and its distance from the cluster's centre: bounds for the exact search below. */
const clusterOf = new Uint32Array(N);
const radius = new Float64Array(N);
function drawRow(i: number): void {
  community[i] = drawCommunity();
  clusterOf[i] = drawCluster(community[i]!);
  drawPoint(vectors, i * DIM, clusterOf[i]!);
  let r = 0;
  for (let d = 0; d < DIM; d++) r += (vectors[i * DIM + d]! - centres[clusterOf[i]! * DIM + d]!) ** 2;
  radius[i] = Math.sqrt(r);
  isPrivate[i] = uniform() < PRIVATE_FRACTION ? 1 : 0;
  place[i] = Math.floor(uniform() * 4);
}
const channelOf = (i: number) => (isPrivate[i] && place[i]! < 2 ? `private-${place[i]}` : `general-${place[i]}`);
const threadOf = (i: number) => (isPrivate[i] && place[i]! >= 2 ? `secret-${place[i]}` : null);

/** Who may see row i from `scope`: the store's rule (src/store/vector-search.ts), restated for the ground truth. */
function visible(i: number, scope: ViewerScope | undefined): boolean {
  if (!isPrivate[i]) return true;
  if (!scope || channelOf(i) !== scope.channelId) return false;
  const thread = threadOf(i);
  return thread === null || thread === (scope.threadId ?? null);
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

const round = (v: number, digits = 2) => Number(v.toFixed(digits));
const log = (line: string) => process.stderr.write(`${line}\n`);
const loadAverage = () => os.loadavg().map((v) => round(v, 2));

const PG_BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';
const run = promisify(execFile);
/** Postgres refuses to run as root: as root, its tools run as the postgres user. */
const pgTool = (tool: string, toolArgs: string[]) =>
  process.getuid?.() === 0
    ? run('runuser', ['-u', 'postgres', '--', `${PG_BIN}/${tool}`, ...toolArgs])
    : run(`${PG_BIN}/${tool}`, toolArgs);

/** Huge pages the machine holds in use or promised (/proc/meminfo), to tell whether the server got its own. */
async function hugePagesTaken(): Promise<number | null> {
  const info = await readFile('/proc/meminfo', 'utf8').catch(() => '');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(info)?.[1] ?? Number.NaN);
  const taken = field('HugePages_Total') - field('HugePages_Free') + field('HugePages_Rsvd');
  return Number.isNaN(taken) ? null : taken;
}

/**
 * --server-dir: a Postgres cluster of the bench's own in `dir` (initdb on first use, kept for --reuse),
 * started for the run on a free port and stopped after it, for server settings a shared Postgres may
 * not take: shared_buffers (--shared-buffers) large enough to hold the HNSW graphs, which a search
 * walks about 1,750 pages of at 1M rows, and huge pages (--huge-pages, default try: used when the
 * machine has enough reserved, `sysctl vm.nr_hugepages`). With 4 kB pages each backend's first touch of a
 * shared buffer is a page fault, about 200 a search, and its first searches are 4x slower (README,
 * "Scaling: the gallery").
 */
async function ownServer(dir: string): Promise<{ url: string; stop(): Promise<void> }> {
  if (!['on', 'off', 'try'].includes(args['huge-pages'])) throw new Error('--huge-pages must be on, off or try');
  const data = path.join(dir, 'data');
  await mkdir(dir, { recursive: true });
  if (process.getuid?.() === 0) await run('chown', ['postgres', dir]);
  if (!existsSync(path.join(data, 'PG_VERSION'))) {
    log(`  initdb ${data}`);
    await pgTool('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8']);
  }
  const port = await new Promise<number>((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
  const options = [
    `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1`,
    `-c shared_buffers=${args['shared-buffers']} -c huge_pages=${args['huge-pages']} -c max_wal_size=8GB -c fsync=off`,
  ].join(' ');
  const hugeBefore = await hugePagesTaken();
  await pgTool('pg_ctl', ['-D', data, '-l', path.join(dir, 'log'), '-o', options, '-w', 'start']);
  const hugeAfter = await hugePagesTaken();
  const huge = hugeBefore === null || hugeAfter === null ? 'unknown' : `${(hugeAfter - hugeBefore) * 2} MB`;
  log(`  own server: shared_buffers ${args['shared-buffers']}, huge_pages ${args['huge-pages']} (huge pages taken: ${huge})`);
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    stop: async () => void (await pgTool('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop'])),
  };
}

async function openBenchDatabase(): Promise<{ client: SqlClient; where: string; cleanup(): Promise<void> }> {
  if (args.db === 'pglite') {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'gill-bench-'));
    return {
      client: await pgliteClient(path.join(dir, 'pglite'), { sessionSettings: SESSION_SETTINGS }),
      where: `PGlite in ${dir}`,
      cleanup: () => rm(dir, { recursive: true, force: true }),
    };
  }
  const server = args['server-dir'] ? await ownServer(path.resolve(args['server-dir'])) : undefined;
  const base =
    server?.url ?? args.url ?? process.env.DATABASE_URL ?? process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
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
  // The whole graph in memory while it is built (pgvector slows sharply once it no longer fits), and one
  // parallel build worker beside the leader: this machine has two cores.
  const indexMemoryMb = Math.max(256, Math.ceil((N * DIM * 4 * 3) / 2 ** 20));
  await admin(`ALTER DATABASE ${name} SET maintenance_work_mem = '${indexMemoryMb}MB'`);
  await admin(`ALTER DATABASE ${name} SET max_parallel_maintenance_workers = 1`);
  const url = new URL(base);
  url.pathname = `/${name}`;
  const client = postgresClient(url.toString(), { max: CONNECTIONS, min: CONNECTIONS, sessionSettings: SESSION_SETTINGS });
  return {
    client,
    where: `Postgres ${url.hostname}:${url.port || 5432}/${name}`,
    async cleanup() {
      await client.close();
      const where = server ? ` --server-dir ${args['server-dir']}` : '';
      if (KEEP) log(`kept database ${name} (measure it with --reuse ${name} --rows ${N}${where})`);
      else await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await server?.stop();
    },
  };
}

/** Draws every row; unless reusing, loads them in batches, the next batch drawn while the last one inserts. */
async function load(client: SqlClient, ids: string[], hash: string): Promise<number> {
  const start = performance.now();
  const BATCH = 1000;
  let pending: Promise<unknown> = Promise.resolve();
  for (let first = 0; first < N; first += BATCH) {
    const end = Math.min(N, first + BATCH);
    const columns: (string | null)[][] = [[], [], [], [], [], []];
    for (let i = first; i < end; i++) {
      drawRow(i);
      if (args.reuse) continue;
      const text = Array.from(vectors.subarray(i * DIM, (i + 1) * DIM), (v) => v.toPrecision(6));
      const row = [ids[community[i]!]!, channelOf(i), threadOf(i), isPrivate[i] ? 'private' : 'public', String(i)];
      row.forEach((value, c) => columns[c]!.push(value));
      columns[5]!.push(`[${text.join(',')}]`);
    }
    if (args.reuse) continue;
    await pending;
    pending = client.query(
      `INSERT INTO images (community_id, hash, mime, width, height, channel_id, thread_id, visibility, message_id, embedding)
       SELECT c, $1, 'image/png', 1, 1, ch, th, v, m, e::vector
       FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) AS t(c, ch, th, v, m, e)`,
      [hash, ...columns],
    );
    if (end % 100_000 === 0) log(`  loaded ${end}`);
  }
  await pending;
  return (performance.now() - start) / 1000;
}

interface Case {
  label: string;
  communityId?: string;
  /** Whose distribution the case's queries are drawn from. */
  source: Source;
  scope?: ViewerScope;
  member: (i: number) => boolean;
}

async function main() {
  const db = await openBenchDatabase();
  try {
    await migrate(db.client);
    const [{ version } = { version: '?' }] = await db.client.query<{ version: string }>(
      "SELECT extversion AS version FROM pg_extension WHERE extname = 'vector'",
    );
    log(
      `store bench: ${db.where}, pgvector ${version}, rows=${N}, dim=${DIM}, ${CLUSTERS} clusters, ` +
        `${QUERIES} queries, load average ${loadAverage().join(' ')}`,
    );

    const store = createStore(db.client);
    const ids: string[] = [];
    for (const name of ['rest', 'big', 'small', 'mid']) {
      ids.push((await store.communities.ensure({ platform: 'cli', externalId: `bench-${name}` })).id);
    }
    const hash = await store.blobs.put(new Uint8Array([0]), 'image/png');
    const [{ n: stored } = { n: 0 }] = await db.client.query<{ n: number }>('SELECT count(*)::int AS n FROM images');
    if (args.reuse && stored !== N) throw new Error(`--reuse: the database holds ${stored} images, not --rows ${N}`);

    const loadSeconds = await load(db.client, ids, hash);
    let indexSeconds: number | null = null;
    const communityIndexes: { community: string; seconds: number; mb: number }[] = [];
    if (!args.reuse) {
      log(`  loaded in ${round(loadSeconds, 1)} s; building the index, load average ${loadAverage().join(' ')}`);
      const indexStart = performance.now();
      await ensureEmbeddingIndex(db.client, DIM);
      indexSeconds = (performance.now() - indexStart) / 1000;
      // What autovacuum does in a running deployment: statistics, and the visibility map for counts.
      await db.client.exec('VACUUM ANALYZE images');
    }
    // The communities' own indexes, which the store's planner would start in the background on their
    // first search: built here (on --reuse, the ones a database kept by an older rule lacks) so that every
    // measurement walks the graph the store settles on.
    for (const id of ids) {
      if (!(await wantsOwnIndex(db.client, id))) continue;
      const start = performance.now();
      if (!(await ensureCommunityIndex(db.client, DIM, id))) continue;
      const [size] = await db.client.query<{ mb: number }>(
        'SELECT round(pg_relation_size($1::regclass) / 1048576.0)::int AS mb',
        [communityIndexName(DIM, id)],
      );
      communityIndexes.push({ community: id, seconds: round((performance.now() - start) / 1000, 1), mb: size!.mb });
      log(`  community ${id}'s own index: ${communityIndexes.at(-1)!.seconds} s, ${size!.mb} MB`);
    }
    const [sizes] = await db.client.query<{ index_mb: number; table_mb: number }>(
      `SELECT round(pg_relation_size($1::regclass) / 1048576.0)::int AS index_mb,
              round(pg_total_relation_size('images') / 1048576.0)::int AS table_mb`,
      [indexName(DIM)],
    );
    log(
      `  HNSW build ${indexSeconds === null ? 'reused' : `${round(indexSeconds, 1)} s`}, index ${sizes!.index_mb} MB, ` +
        `table with indexes ${sizes!.table_mb} MB, load average ${loadAverage().join(' ')}`,
    );
    const build = {
      loadSeconds: args.reuse ? null : round(loadSeconds, 1),
      indexSeconds: indexSeconds && round(indexSeconds, 1),
      indexMb: sizes!.index_mb,
      communityIndexes,
    };
    if (args['build-only']) {
      console.log(JSON.stringify({ bench: 'store', db: args.db, pgvector: version, rows: N, dim: DIM, ...build }));
      return;
    }
    if (args['server-dir']) {
      // A running deployment's graph and the rows its searches fetch stay in shared buffers; a freshly
      // started server's are empty (a search then reads each of its ~1,750 graph pages and 40 rows).
      const start = performance.now();
      await db.client.exec('CREATE EXTENSION IF NOT EXISTS pg_prewarm');
      await db.client.query("SELECT pg_prewarm('images')");
      await db.client.query(
        `SELECT pg_prewarm(indexrelid) FROM pg_index WHERE indrelid = 'images'::regclass
         AND indexrelid::regclass::text LIKE $1`,
        [`${indexName(DIM)}%`],
      );
      log(`  the images table and its HNSW indexes read into shared buffers in ${round((performance.now() - start) / 1000, 1)} s`);
    }

    // Queries are drawn as the images are: people search for what their community posts. The
    // off-topic row draws them from the whole gallery instead, mostly topics the community never posted.
    const queriesFrom = new Map<Source, Float32Array>();
    for (const source of ['anyone', REST, BIG, MID, SMALL] as Source[]) {
      const set = new Float32Array(QUERIES * DIM);
      for (let q = 0; q < QUERIES; q++)
        drawPoint(set, q * DIM, drawCluster(source === 'anyone' ? drawCommunity() : source));
      queriesFrom.set(source, set);
    }
    const privateChannel: ViewerScope = { channelId: 'private-0', threadId: null };
    const privateThread: ViewerScope = { channelId: 'general-2', threadId: 'secret-2' };
    const inCommunity = (id: number, scope?: ViewerScope) => (i: number) => community[i] === id && visible(i, scope);
    const allCases: Case[] = [
      { label: 'unfiltered', source: 'anyone', member: () => true },
      { label: 'community 87.9%', communityId: ids[REST], source: REST, member: inCommunity(REST) },
      { label: 'community 10%', communityId: ids[BIG], source: BIG, member: inCommunity(BIG) },
      { label: '10%, off-topic queries', communityId: ids[BIG], source: 'anyone', member: inCommunity(BIG) },
      { label: 'community 2%', communityId: ids[MID], source: MID, member: inCommunity(MID) },
      { label: 'community 0.1%', communityId: ids[SMALL], source: SMALL, member: inCommunity(SMALL) },
      {
        label: '10%, private channel',
        communityId: ids[BIG],
        scope: privateChannel,
        source: BIG,
        member: inCommunity(BIG, privateChannel),
      },
      {
        label: '0.1%, private thread',
        communityId: ids[SMALL],
        scope: privateThread,
        source: SMALL,
        member: inCommunity(SMALL, privateThread),
      },
    ];

    const cases = allCases.filter((c) => !args.only || c.label.includes(args.only));
    /**
     * The exact top-k of every query in every case, without scoring every row: for a unit query q and
     * a row x of cluster centre c, q·x = q·c + q·(x − c) ≤ q·c + |x − c| (Cauchy–Schwarz). Clusters are
     * visited best bound first and a case stops once no remaining row can beat its k-th score.
     */
    const byCluster = cases.map((c) => {
      const lists = Array.from({ length: CLUSTERS }, () => [] as number[]);
      for (let i = 0; i < N; i++) if (c.member(i)) lists[clusterOf[i]!]!.push(i);
      return lists.map((rows) => ({ rows, reach: Math.max(0, ...rows.map((i) => radius[i]!)) }));
    });
    const members = byCluster.map((lists) => lists.reduce((n, list) => n + list.rows.length, 0));
    const expected = cases.map(() => [] as Set<string>[]);
    const centreScore = new Float64Array(CLUSTERS);
    for (const [source, queries] of queriesFrom) {
      const mine = cases.flatMap((c, index) => (c.source === source ? [index] : []));
      if (mine.length === 0) continue;
      for (let q = 0; q < QUERIES; q++) {
        const query = queries.subarray(q * DIM, (q + 1) * DIM);
        for (let c = 0; c < CLUSTERS; c++) {
          let s = 0;
          for (let d = 0; d < DIM; d++) s += query[d]! * centres[c * DIM + d]!;
          centreScore[c] = s;
        }
        for (const index of mine) {
          const lists = byCluster[index]!;
          const bound = (c: number) => centreScore[c]! + lists[c]!.reach + 1e-4; // float32 rounding margin
          const order = lists.map((_, c) => c).filter((c) => lists[c]!.rows.length > 0);
          order.sort((a, b) => bound(b) - bound(a));
          const top: { i: number; s: number }[] = [];
          for (const c of order) {
            if (top.length === K && bound(c) <= top[K - 1]!.s) break;
            for (const i of lists[c]!.rows) {
              if (top.length === K && centreScore[c]! + radius[i]! + 1e-4 <= top[K - 1]!.s) continue;
              let s = 0;
              const o = i * DIM;
              for (let d = 0; d < DIM; d++) s += query[d]! * vectors[o + d]!;
              if (top.length === K && s <= top[K - 1]!.s) continue;
              top.push({ i, s });
              top.sort((a, b) => b.s - a.s);
              if (top.length > K) top.pop();
            }
          }
          expected[index]!.push(new Set(top.map((b) => String(b.i))));
        }
      }
    }
    log(`  exact top-${K} of ${QUERIES} queries computed, load average ${loadAverage().join(' ')}`);

    /** The same client, but search statements are EXPLAINed: tells whether a plan really walks the graph. */
    let explained = '';
    const explaining = (tx: SqlQuery): SqlQuery => ({
      exec: (sql) => tx.exec(sql),
      async query<T extends Row>(text: string, params?: unknown[]) {
        if (!text.trimStart().startsWith('WITH candidates')) return tx.query<T>(text, params);
        const rows = await tx.query(`EXPLAIN ${text}`, params);
        explained ||= rows.map((r) => Object.values(r).join(' ')).join('\n'); // the first statement's plan
        return [] as T[];
      },
    });
    const explainClient: SqlClient = {
      ...db.client,
      ...explaining(db.client),
      transaction: (fn) => db.client.transaction((tx) => fn(explaining(tx))),
    };

    // The store's own choice, remembered per community as src/store/images.ts does.
    const planFor = planner(db.client);
    const results: Record<string, unknown>[] = [];
    for (const [index, c] of cases.entries()) {
      const matching = members[index]!;
      // Forced plans beside the store's choice; an exact scan of most of a large table takes seconds.
      const forced: SearchPlan[] = matching > 200_000 ? ['hnsw'] : ['hnsw', 'exact'];
      const plans: (SearchPlan | undefined)[] = [undefined, ...(args.sweep ? forced : [])];
      for (const force of plans) {
        const used = new Map<string, number>();
        const plan = force ?? (c.communityId === undefined ? undefined : await planFor(c.communityId, DIM));
        const search = (q: number, client = db.client) =>
          nearest<{ id: string; score: number; messageId: string }>(client, '"message_id" AS "messageId"', {
            communityId: c.communityId,
            scope: c.scope,
            embedding: queriesFrom.get(c.source)!.subarray(q * DIM, (q + 1) * DIM),
            k: K,
            plan,
            forced: force !== undefined,
            efSearch: EF,
            candidates: FETCH && FETCH * K,
            onPlan: (plan) => used.set(plan, (used.get(plan) ?? 0) + 1),
          });
        for (let q = 0; q < Math.min(20, QUERIES); q++) await search(q); // warm caches
        used.clear();
        const times: number[] = [];
        let hits = 0;
        for (let q = 0; q < QUERIES; q++) {
          const t = performance.now();
          const rows = await search(q);
          times.push(performance.now() - t);
          hits += rows.filter((r) => expected[index]![q]!.has(r.messageId)).length;
        }
        times.sort((a, b) => a - b);
        const usedPlans = [...used].map(([p, n]) => `${p} ${n}`).join(', ');
        explained = '';
        await search(0, explainClient);
        const row = {
          case: c.label,
          matchingRows: matching,
          plan: force ?? 'store',
          used: usedPlans,
          index: new RegExp(`${indexName(DIM)}\\w*`).exec(explained)?.[0] ?? null,
          p50Ms: round(percentile(times, 50)),
          p95Ms: round(percentile(times, 95)),
          recallAt10: round(hits / (QUERIES * K), 4),
          loadAverage: loadAverage()[0],
        };
        results.push(row);
        log(
          `  ${c.label.padEnd(22)} ${String(matching).padStart(8)} rows  ${row.plan.padEnd(6)} p50 ${String(row.p50Ms).padStart(7)} ms  ` +
            `p95 ${String(row.p95Ms).padStart(7)} ms  recall@10 ${row.recallAt10.toFixed(3)}  ` +
            `(${usedPlans}${row.index ? `, ${row.index}` : ''}; load ${row.loadAverage})`,
        );
      }
    }

    console.log(
      JSON.stringify({
        bench: 'store',
        db: args.db,
        pgvector: version,
        rows: N,
        dim: DIM,
        clusters: CLUSTERS,
        queries: QUERIES,
        k: K,
        efSearch: EF ?? DEFAULT_EF_SEARCH,
        candidatesPerResult: FETCH ?? DEFAULT_CANDIDATES,
        ...build,
        results,
      }),
    );
  } finally {
    await db.cleanup();
  }
}

await main();
