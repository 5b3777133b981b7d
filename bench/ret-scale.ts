/**
 * Chooses the bundle's `retScaleFactor` (docs/gill-method.md §3 step 2: [IMG0]'s logit becomes
 * |logit| × factor before the next-token choice) from a measurement: for every turn of a set of dialogues,
 * which factors make greedy decoding emit [IMG0] — statements and small talk should get no image, requests
 * should. The set is validation-split dialogues (models/training/gill_tiny/dialogue_turns.py), never the
 * held-out thread set, which is for reporting.
 *
 *   /usr/bin/python3 -m models.training.gill_tiny.dialogue_turns --out /tmp/val-dialogues.json
 *   npx tsx bench/ret-scale.ts --set /tmp/val-dialogues.json [--bundle models/gill-tiny] [--limit N]
 *                              [--replies reference|none] [--factors 1,1.1,1.2,1.3] [--out FILE]
 *
 * Each turn's prompt is the engine's (the manifest's dialogue template, the same prompt fitting) with the
 * earlier turns and their reference replies as the bot's text. One greedy decode per turn with [IMG0]
 * held back gives every factor's answer: until [IMG0] is emitted the decode is the same for all factors,
 * so a factor emits [IMG0] exactly when it would win at one of that decode's steps.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { loadBundle } from '../src/engine/bundle.ts';
import { img0Magnitude } from '../src/engine/gill/decode.ts';
import { embedTokens, LmSequence } from '../src/engine/gill/lm.ts';
import { GillModel } from '../src/engine/gill/model.ts';
import type { ConversationItem } from '../src/engine/gill/prompt.ts';

const { values: args } = parseArgs({
  options: {
    set: { type: 'string' },
    bundle: { type: 'string', default: 'models/gill-tiny' },
    limit: { type: 'string' },
    replies: { type: 'string', default: 'reference' },
    factors: { type: 'string', default: '1,1.05,1.1,1.2,1.3,1.5,2,2.5,3,3.5,4,5' },
    /** Where [IMG0] may come: anywhere in the reply (the reference) or only first (`imgAtReplyStart`). */
    at: { type: 'string', default: 'anywhere' },
    out: { type: 'string' },
  },
});
if (!args.set) throw new Error('--set FILE (validation dialogues from models/training/gill_tiny/dialogue_turns.py)');
if (args.replies !== 'reference' && args.replies !== 'none') throw new Error('--replies: reference or none');
const factors = args.factors.split(',').map(Number);
if (args.at !== 'anywhere' && args.at !== 'start') throw new Error('--at: anywhere or start');

interface Dialogue {
  id: string;
  kind: string;
  turns: string[];
  replies: string[];
  turn_types: ('request' | 'statement' | 'chat')[];
}
const doc = JSON.parse(await readFile(args.set, 'utf8')) as { format: string; split: string; dialogues: Dialogue[] };
if (doc.format !== 'gill-dialogue-turns/1') throw new Error(`${args.set}: not a gill-dialogue-turns/1 file`);
let dialogues = doc.dialogues;
if (args.limit) dialogues = dialogues.slice(0, Number(args.limit));

const bundle = await loadBundle(args.bundle, { threads: 1, spinWait: false });
const model = new GillModel(bundle);
const { eosId, newlineId } = bundle.manifest.lm;
const imgIds = model.tokenizer.imgIds;
const img0 = imgIds[0]!;
const maxNewTokens = model.budget().newTokens;

/** Whether [IMG0] wins a step at `factor`, as decode.applyImgRules scores it (the bundle's `imgScaleAbs`). */
const imgScaleAbs = bundle.manifest.defaults.imgScaleAbs ?? true;
const magnitude = (l: number) => img0Magnitude(l, imgScaleAbs);
const wins = (l: number, other: number, factor: number) => (factor > 1 ? magnitude(l) * factor : l) > other;

interface TurnResult {
  id: string;
  turn: number;
  type: Dialogue['turn_types'][number];
  /** [IMG0]'s logit and the best other token's at each step of the image-free greedy decode. */
  steps: [number, number][];
  reply: string;
}

async function measure(items: ConversationItem<Uint8Array>[]): Promise<Omit<TurnResult, 'id' | 'turn' | 'type'>> {
  const prompt = await model.prepareChatPrompt(items);
  const sequence = new LmSequence(bundle);
  let logits = (await sequence.feed(await model.embedPrompt(prompt.segments))).logits;
  const steps: [number, number][] = [];
  const ids: number[] = [];
  for (let i = 0; i < maxNewTokens; i++) {
    let best = -1;
    let bestValue = Number.NEGATIVE_INFINITY;
    for (let t = 0; t < logits.length; t++) {
      if (model.tokenizer.isImgToken(t)) continue;
      if (logits[t]! > bestValue) {
        bestValue = logits[t]!;
        best = t;
      }
    }
    steps.push([logits[img0]!, bestValue]);
    if (best === eosId || (best === newlineId && ids.length > 0)) break;
    ids.push(best);
    logits = (await sequence.feed(await embedTokens(bundle, [best]))).logits;
  }
  return { steps, reply: model.tokenizer.decode(ids).trim() };
}

const results: TurnResult[] = [];
const started = performance.now();
for (const d of dialogues) {
  const items: ConversationItem<Uint8Array>[] = [];
  for (const [i, text] of d.turns.entries()) {
    items.push({ role: 'user', content: { type: 'text', text } });
    results.push({ id: d.id, turn: i, type: d.turn_types[i]!, ...(await measure(items)) });
    if (args.replies === 'reference') items.push({ role: 'assistant', content: { type: 'text', text: d.replies[i]! } });
  }
}

const emits = (r: TurnResult, factor: number) =>
  (args.at === 'start' ? r.steps.slice(0, 1) : r.steps).some(([l, other]) => wins(l, other, factor));
/** The smallest factor above 1 at which the turn gets [IMG0] (Infinity: none does). */
const threshold = (r: TurnResult) =>
  Math.min(
    ...(args.at === 'start' ? r.steps.slice(0, 1) : r.steps).map(([l, other]) =>
      magnitude(l) <= 0 ? Number.POSITIVE_INFINITY : Math.max(1, other / magnitude(l)),
    ),
  );
const pct = (rows: TurnResult[], factor: number) =>
  rows.length ? (100 * rows.filter((r) => emits(r, factor)).length) / rows.length : Number.NaN;
const statements = results.filter((r) => r.type !== 'request');
const requests = results.filter((r) => r.type === 'request');
console.log(
  `${doc.split} set ${args.set}: ${dialogues.length} dialogues, ${statements.length} statement / small-talk turns, ${requests.length} request turns; bundle ${args.bundle}; replies ${args.replies}; [IMG0] ${args.at}; ${((performance.now() - started) / 1000).toFixed(0)} s\n`,
);
console.log('| retScaleFactor | statements with [IMG0] | small talk with [IMG0] | requests with [IMG0] | balanced error |');
console.log('|---|---|---|---|---|');
const table = factors.map((factor) => {
  const s = pct(statements, factor);
  const row = {
    factor,
    statements: s,
    statementsOnly: pct(
      statements.filter((r) => r.type === 'statement'),
      factor,
    ),
    chat: pct(
      statements.filter((r) => r.type === 'chat'),
      factor,
    ),
    requests: pct(requests, factor),
  };
  const balanced = (row.statements + (100 - row.requests)) / 2;
  console.log(
    `| ${factor} | ${row.statementsOnly.toFixed(1)}% | ${row.chat.toFixed(1)}% | ${row.requests.toFixed(1)}% | ${balanced.toFixed(1)}% |`,
  );
  return { ...row, balancedError: balanced };
});
const highestRequest = Math.max(...requests.map(threshold));
const lowestStatement = Math.min(...statements.map(threshold));
console.log(
  `\nfactor thresholds: requests up to ${highestRequest.toFixed(3)}, statements / small talk from ${lowestStatement.toFixed(3)}${highestRequest < lowestStatement ? `; separated, the geometric midpoint is ${Math.sqrt(highestRequest * lowestStatement).toFixed(2)}` : '; they overlap'}`,
);
if (args.out) {
  await writeFile(args.out, JSON.stringify({ set: args.set, bundle: args.bundle, replies: args.replies, table, results }, null, 1));
  console.log(`\nwritten to ${args.out}`);
}
await bundle.close();
