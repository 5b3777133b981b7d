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
 *                           [--retrieve-bias B] [--bundle models/gill-tiny] [--threads 2] [--out FILE]
 *
 * The set defaults to models/gill-tiny/eval/threads.json when it exists, else bench/threads/conversations.json.
 * `--retrieve-bias=-10` sets every community's `/gill bias` so that the bot always generates: the context's
 * effect on the image apart from the decision. Uses Postgres when DATABASE_URL is set (the caller's fresh
 * database), else PGlite in a temporary folder.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { connect } from '../src/store/index.ts';
import { ATTRIBUTES } from './threads/attributes.ts';
import { DEFAULT_SET, loadConversations } from './threads/conversations.ts';
import { PLATFORMS, type PlatformName } from './threads/platforms.ts';
import { determinism, scorePlatform, startReplaySession } from './threads/replay.ts';

const HELD_OUT_SET = 'models/gill-tiny/eval/threads.json';

const { values: args } = parseArgs({
  options: {
    set: { type: 'string' },
    limit: { type: 'string' },
    platforms: { type: 'string', default: PLATFORMS.join(',') },
    runs: { type: 'string', default: '1' },
    'retrieve-bias': { type: 'string' },
    bundle: { type: 'string', default: 'models/gill-tiny' },
    threads: { type: 'string', default: '2' },
    out: { type: 'string' },
  },
});
const platforms = args.platforms.split(',').map((p) => p.trim()) as PlatformName[];
for (const p of platforms) if (!PLATFORMS.includes(p)) throw new Error(`--platforms: unknown platform ${p}`);
const runs = Number(args.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs must be an integer ≥ 1');
const retrieveBias = args['retrieve-bias'] === undefined ? undefined : Number(args['retrieve-bias']);
if (retrieveBias !== undefined && !(Math.abs(retrieveBias) <= 10))
  throw new Error('--retrieve-bias must be a number from -10 to 10');
const setFile = args.set ?? (existsSync(HELD_OUT_SET) ? HELD_OUT_SET : DEFAULT_SET);
let conversations = await loadConversations(setFile);
if (args.limit) conversations = conversations.slice(0, Number(args.limit));

const dataDir = await mkdtemp(path.join(tmpdir(), 'gill-eval-threads-'));
const logger = createLogger(process.env.GILL_LOG_LEVEL ?? 'error');
const config = loadConfig({
  ...process.env,
  GILL_MODEL: args.bundle,
  GILL_DATA_DIR: dataDir,
  GILL_THREADS: args.threads,
});
const store = await connect(config);
const started = performance.now();

try {
  const session = await startReplaySession({ config, store, logger, platforms, retrieveBias });
  console.log(
    `set ${setFile}: ${conversations.length} conversations × ${platforms.join(', ')} × ${runs} run(s); bundle ${args.bundle}; retrieve bias ${retrieveBias ?? 'default'}; ready in ${((performance.now() - started) / 1000).toFixed(0)} s`,
  );
  let results: Awaited<ReturnType<typeof session.replay>>;
  try {
    results = await session.replay(conversations, runs);
  } finally {
    await session.close();
  }

  const first = results[0]!;
  console.log(
    '\n| platform | colour | shape | size | position | mean | last turn retrieved / no image | statements with an image | reply rubric |',
  );
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const platform of platforms) {
    const s = scorePlatform(platform, first);
    const cells = [...ATTRIBUTES, 'mean' as const].map((a) => s.accuracy[a].toFixed(1));
    console.log(
      `| ${platform} | ${cells.join(' | ')} | ${s.finalRetrieved} / ${s.finalWithoutImage} of ${s.conversations} | ${s.statementsWithImage} of ${s.statements} | ${s.replyRubric.toFixed(1)}% of ${s.rubricWords} words |`,
    );
  }
  const same = determinism(results, conversations, platforms);
  console.log(
    `\ncontexts identical on all platforms: ${same.samePlatforms} of ${conversations.length}; on all platforms and across ${runs} run(s): ${same.sameRuns} of ${conversations.length}`,
  );
  console.log(`wall time ${((performance.now() - started) / 1000).toFixed(0)} s`);
  if (args.out) {
    await writeFile(args.out, JSON.stringify({ set: setFile, platforms, retrieveBias, runs: results }, null, 1));
    console.log(`runs written to ${args.out}`);
  }
} finally {
  await store.close();
  await rm(dataDir, { recursive: true, force: true });
}
