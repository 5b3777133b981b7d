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
 *                           [--results models/gill-tiny/eval/thread-replay.json] [--bot-context full|text|none]
 *
 * The set defaults to models/gill-tiny/eval/threads.json when it exists, else bench/threads/conversations.json.
 * `--retrieve-bias=-10` sets every community's `/gill bias` so that the bot always generates: the context's
 * effect on the image apart from the decision; `--bot-context text|none` has the model read only the text of the
 * bot's own turns, or none of them (an ablation: the jobs still record the full context). Uses Postgres when DATABASE_URL is set (the caller's fresh
 * database), else PGlite in a temporary folder. `--out` writes every run (turns, replies, contexts);
 * `--results` the summary that models/training/gill_tiny/evaluate.py renders as EVAL.md's "Thread replay".
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { connect } from '../src/store/index.ts';
import { ATTRIBUTES } from './threads/attributes.ts';
import { DEFAULT_SET, loadConversations } from './threads/conversations.ts';
import { PLATFORMS, type PlatformName } from './threads/platforms.ts';
import {
  BOT_CONTEXTS,
  type BotContext,
  determinism,
  scorePlatform,
  startReplaySession,
} from './threads/replay.ts';

const HELD_OUT_SET = 'models/gill-tiny/eval/threads.json';
const round = (x: number) => Math.round(x * 10) / 10;

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
    results: { type: 'string' },
    'bot-context': { type: 'string', default: 'full' },
  },
});
const platforms = args.platforms.split(',').map((p) => p.trim()) as PlatformName[];
for (const p of platforms) if (!PLATFORMS.includes(p)) throw new Error(`--platforms: unknown platform ${p}`);
const runs = Number(args.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs must be an integer ≥ 1');
const retrieveBias = args['retrieve-bias'] === undefined ? undefined : Number(args['retrieve-bias']);
if (retrieveBias !== undefined && !(Math.abs(retrieveBias) <= 10))
  throw new Error('--retrieve-bias must be a number from -10 to 10');
const botContext = args['bot-context'] as BotContext;
if (!BOT_CONTEXTS.includes(botContext)) throw new Error(`--bot-context: one of ${BOT_CONTEXTS.join(', ')}`);
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
  const session = await startReplaySession({ config, store, logger, platforms, retrieveBias, botContext });
  console.log(
    `set ${setFile}: ${conversations.length} conversations × ${platforms.join(', ')} × ${runs} run(s); bundle ${args.bundle}; retrieve bias ${retrieveBias ?? 'default'}; bot's turns read: ${botContext}; ready in ${((performance.now() - started) / 1000).toFixed(0)} s`,
  );
  let results: Awaited<ReturnType<typeof session.replay>>;
  try {
    results = await session.replay(conversations, runs);
  } finally {
    await session.close();
  }

  const first = results[0]!;
  const wall = (performance.now() - started) / 1000;
  const pct = (n: number, of: number) => (of ? (100 * n) / of : Number.NaN);
  console.log(
    '\n| platform | colour | shape | size | position | mean | last turn retrieved / no image | statements with an image | requests with an image | reply rubric (statements) |',
  );
  console.log('|---|---|---|---|---|---|---|---|---|---|');
  const rows = platforms.map((platform) => {
    const s = scorePlatform(platform, first);
    const ack = scorePlatform(platform, first, (t) => !t.askedImage);
    const cells = [...ATTRIBUTES, 'mean' as const].map((a) => s.accuracy[a].toFixed(1));
    console.log(
      `| ${platform} | ${cells.join(' | ')} | ${s.finalRetrieved} / ${s.finalWithoutImage} of ${s.conversations} | ${s.statementsWithImage} of ${s.statements} | ${s.requestsWithImage} of ${s.requests} | ${s.replyRubric.toFixed(1)}% of ${s.rubricWords} words (${ack.replyRubric.toFixed(1)}% of ${ack.rubricWords}) |`,
    );
    const types = Object.entries(s.withImageByType);
    if (types.length) console.log(`  ${platform}, turns with an image by type: ${types.map(([t, v]) => `${t} ${v.withImage} of ${v.turns}`).join(', ')}`);
    return { score: s, statementRubric: ack.replyRubric, statementRubricWords: ack.rubricWords };
  });
  const kinds = [...new Set(conversations.map((c) => c.kind))];
  console.log(`\nmean attribute accuracy per kind\n\n| platform | ${kinds.join(' | ')} |\n|---|${kinds.map(() => '---|').join('')}`);
  const byKind = Object.fromEntries(
    platforms.map((platform) => {
      const accuracy = Object.fromEntries(
        kinds.map((kind) => [kind, scorePlatform(platform, first.filter((r) => r.kind === kind)).accuracy]),
      );
      console.log(`| ${platform} | ${kinds.map((k) => accuracy[k]!.mean.toFixed(1)).join(' | ')} |`);
      return [platform, accuracy];
    }),
  );
  const same = determinism(results, conversations, platforms);
  console.log(
    `\ncontexts identical on all platforms: ${same.samePlatforms} of ${conversations.length}; on all platforms and across ${runs} run(s): ${same.sameRuns} of ${conversations.length}`,
  );
  console.log(`wall time ${wall.toFixed(0)} s`);
  if (args.out) {
    await writeFile(args.out, JSON.stringify({ set: setFile, platforms, retrieveBias, runs: results }, null, 1));
    console.log(`runs written to ${args.out}`);
  }
  if (args.results) {
    const manifest = JSON.parse(await readFile(path.join(args.bundle, 'manifest.json'), 'utf8'));
    const tokenizer = JSON.parse(await readFile(path.join(args.bundle, manifest.lm.tokenizer), 'utf8'));
    const summary = {
      format: 'gill-thread-replay/1',
      date: new Date().toISOString().slice(0, 10),
      set: setFile,
      conversations: conversations.length,
      retrieveBias: retrieveBias ?? null,
      bundle: {
        retScaleFactor: manifest.defaults.retScaleFactor,
        imgAtReplyStart: manifest.defaults.imgAtReplyStart ?? false,
        imgScaleAbs: manifest.defaults.imgScaleAbs ?? true,
        imgAfterText: manifest.defaults.imgAfterText ?? false,
        ownImagesInContext: manifest.defaults.ownImagesInContext ?? true,
        minRetrieveSimilarity: manifest.defaults.minRetrieveSimilarity ?? null,
        lmNormalizer: tokenizer.normalizer ?? null,
        lexicon: manifest.lm.lexicon ?? null,
        replyImage: manifest.gill.replyImage ?? null,
      },
      wallSeconds: Math.round(wall),
      contextsIdenticalOnAllPlatforms: same.samePlatforms,
      platforms: Object.fromEntries(
        rows.map(({ score: s, statementRubric, statementRubricWords }) => [
          s.platform,
          {
            accuracy: Object.fromEntries(Object.entries(s.accuracy).map(([k, v]) => [k, round(v)])),
            accuracyByKind: Object.fromEntries(
              Object.entries(byKind[s.platform]!).map(([k, v]) => [k, round(v.mean)]),
            ),
            finalRetrieved: s.finalRetrieved,
            finalWithoutImage: s.finalWithoutImage,
            statementsWithImage: s.statementsWithImage,
            statements: s.statements,
            statementsWithImagePct: round(pct(s.statementsWithImage, s.statements)),
            withImageByType: s.withImageByType,
            requestsWithImage: s.requestsWithImage,
            requests: s.requests,
            requestsWithImagePct: round(pct(s.requestsWithImage, s.requests)),
            replyRubric: round(s.replyRubric),
            rubricWords: s.rubricWords,
            statementRubric: round(statementRubric),
            statementRubricWords,
          },
        ]),
      ),
    };
    await writeFile(args.results, `${JSON.stringify(summary, null, 1)}\n`);
    console.log(`results written to ${args.results}`);
  }
} finally {
  await store.close();
  await rm(dataDir, { recursive: true, force: true });
}
