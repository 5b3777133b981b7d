/**
 * Thread replay evaluation (issue #12 §1): multi-turn conversations replayed through the real path — the
 * loopback Discord (real discord.js client), the loopback Slack (real Bolt app, signed events) and the
 * playground's HTTP API → adapter → core context → queue → the GILL engine on the real bundle — with
 * the bot's replies staying in the thread between turns. The last turn's image is scored by its pixels
 * (bench/threads/attributes.ts); replies by the rubric (the stated attribute appears in the reply).
 * Every community starts with the emoji gallery `gill start` seeds, so the retrieve/generate decision
 * meets the same gallery as in the playground.
 *
 *   npm run eval:threads -- [--set FILE] [--limit N] [--platforms discord,slack,playground] [--runs 1]
 *                           [--bundle models/gill-tiny] [--threads 2] [--out results.json]
 *
 * The set defaults to models/gill-tiny/eval/threads.json when it exists, else bench/threads/conversations.json.
 * Uses Postgres when DATABASE_URL is set (a fresh database is the caller's), else PGlite in a temporary folder.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../src/config.ts';
import { createEngine } from '../src/engine/index.ts';
import { createLogger } from '../src/log.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import { runJobs } from '../src/queue/worker.ts';
import { connect } from '../src/store/index.ts';
import { ATTRIBUTES } from './threads/attributes.ts';
import { DEFAULT_SET, loadConversations } from './threads/conversations.ts';
import { PLATFORMS, type PlatformName, startDriver } from './threads/platforms.ts';
import {
  type ConversationRun,
  contextsOf,
  replayConversation,
  scorePlatform,
  prepareCommunities,
} from './threads/replay.ts';

const HELD_OUT_SET = 'models/gill-tiny/eval/threads.json';

const { values: args } = parseArgs({
  options: {
    set: { type: 'string' },
    limit: { type: 'string' },
    platforms: { type: 'string', default: PLATFORMS.join(',') },
    runs: { type: 'string', default: '1' },
    bundle: { type: 'string', default: 'models/gill-tiny' },
    threads: { type: 'string', default: '2' },
    out: { type: 'string' },
  },
});
const platforms = args.platforms.split(',').map((p) => p.trim()) as PlatformName[];
for (const p of platforms) if (!PLATFORMS.includes(p)) throw new Error(`--platforms: unknown platform ${p}`);
const runs = Number(args.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs must be an integer ≥ 1');
const setFile = args.set ?? (existsSync(HELD_OUT_SET) ? HELD_OUT_SET : DEFAULT_SET);
let conversations = await loadConversations(setFile);
if (args.limit) conversations = conversations.slice(0, Number(args.limit));

const dataDir = await mkdtemp(path.join(tmpdir(), 'gill-eval-threads-'));
const logger = createLogger(process.env.GILL_LOG_LEVEL ?? 'warn');
const config = loadConfig({
  ...process.env,
  GILL_MODEL: args.bundle,
  GILL_DATA_DIR: dataDir,
  GILL_THREADS: args.threads,
});
const store = await connect(config);
const queue = new MemoryJobQueue({ logger });
const engine = await createEngine(config, store, logger);
const worker = runJobs({ queue, store, engine, logger });
const shared = { store, queue, logger, dataDir };
const started = performance.now();

try {
  const drivers = await Promise.all(platforms.map((p) => startDriver(p, shared)));
  await prepareCommunities(store, drivers, (bytes) => engine.model.imageEmbedding(bytes));
  console.log(`galleries seeded and indexed in ${((performance.now() - started) / 1000).toFixed(0)} s`);
  console.log(
    `set ${setFile}: ${conversations.length} conversations × ${platforms.join(', ')} × ${runs} run(s); bundle ${args.bundle}`,
  );
  const results: ConversationRun[][] = [];
  for (let run = 0; run < runs; run++) {
    const perPlatform = await Promise.all(
      drivers.map(async (driver) => {
        const out: ConversationRun[] = [];
        for (const conversation of conversations) {
          out.push(await replayConversation(driver, store, conversation));
        }
        return out;
      }),
    );
    results.push(perPlatform.flat());
  }
  await Promise.all(drivers.map((d) => d.stop()));

  const first = results[0]!;
  console.log('\n| platform | colour | shape | size | position | mean | last turn retrieved / no image | statements with an image | reply rubric |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const platform of platforms) {
    const s = scorePlatform(platform, first);
    const cells = [...ATTRIBUTES, 'mean' as const].map((a) => s.accuracy[a].toFixed(1));
    console.log(
      `| ${platform} | ${cells.join(' | ')} | ${s.finalRetrieved} / ${s.finalWithoutImage} of ${s.conversations} | ${s.statementsWithImage} of ${s.statements} | ${s.replyRubric.toFixed(1)}% of ${s.rubricWords} words |`,
    );
  }

  // Determinism: the same conversation must give the same context items on every platform and run.
  let samePlatforms = 0;
  let sameRuns = 0;
  for (const conversation of conversations) {
    const contexts = results.map((r) =>
      platforms.map((p) => contextsOf(r.find((c) => c.id === conversation.id && c.platform === p)!)),
    );
    if (new Set(contexts[0]).size === 1) samePlatforms++;
    if (contexts.every((c) => c.join() === contexts[0]!.join())) sameRuns++;
  }
  console.log(
    `\ncontexts identical on all platforms: ${samePlatforms} of ${conversations.length}; identical across ${runs} run(s): ${sameRuns} of ${conversations.length}`,
  );
  console.log(`wall time ${((performance.now() - started) / 1000).toFixed(0)} s`);
  if (args.out) {
    await writeFile(args.out, JSON.stringify({ set: setFile, platforms, runs: results }, null, 1));
    console.log(`runs written to ${args.out}`);
  }
} finally {
  await worker.close();
  await queue.close();
  await engine.close();
  await store.close();
  await rm(dataDir, { recursive: true, force: true });
}
