import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadBundle } from '../src/engine/bundle.ts';
import { IN_CI } from './support/services.ts';

/**
 * One smoke run of the whole training pipeline (models/training/train.py --preset smoke: a few steps of every
 * stage, backbones, GILL stage, decision head, export, fixtures, evaluation) into a temporary folder, then
 * checks that every stage's loss fell, that the exported graphs load and match the manifest's shapes, and that
 * the fixtures and EVAL.md were written. Needs Debian's python3 with torch; outside CI a missing torch skips
 * loudly.
 */

const PYTHON = '/usr/bin/python3';
const TRAIN = path.resolve('models/training/train.py');
const TRAINED_STAGES = ['lm', 'chat', 'clip', 'vae', 'unet', 'gill', 'retrieval', 'decision'];

function torchAvailable(): string | null {
  const probe = spawnSync(PYTHON, ['-c', 'import torch, onnx, numpy, PIL'], { encoding: 'utf8' });
  if (probe.error) return probe.error.message;
  return probe.status === 0 ? null : probe.stderr.trim().split('\n').at(-1) || `exit ${probe.status}`;
}

const missing = torchAvailable();
if (missing) {
  if (IN_CI) throw new Error(`PyTorch (${PYTHON}) is required when CI=true but unavailable: ${missing}`);
  console.warn(
    `\n*** SKIPPING model-training smoke tests: PyTorch unavailable at ${PYTHON} (${missing}) ***\n`,
  );
}

interface Metric {
  stage: string;
  step?: number;
  loss?: number;
  [key: string]: unknown;
}

describe.skipIf(missing !== null)('model training smoke run', () => {
  let dir = '';
  let work = '';
  let out = '';
  let metrics: Metric[] = [];
  let run: ReturnType<typeof spawnSync>;

  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'gill-train-'));
    work = path.join(dir, 'work');
    out = path.join(dir, 'bundle');
    run = spawnSync(
      PYTHON,
      [TRAIN, '--preset', 'smoke', '--device', 'cpu', '--threads', '1', '--work', work, '--out', out],
      { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, timeout: 20 * 60_000 },
    );
    const metricsPath = path.join(work, 'metrics.jsonl');
    if (existsSync(metricsPath)) {
      metrics = readFileSync(metricsPath, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Metric);
    }
  }, 21 * 60_000);

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('runs every stage to the end', () => {
    expect(run.error, String(run.error)).toBeUndefined();
    expect(
      run.status,
      `train.py failed:\n${String(run.stdout).slice(-4000)}\n${String(run.stderr).slice(-4000)}`,
    ).toBe(0);
    const finished = new Set(metrics.filter((m) => 'stage_seconds' in m).map((m) => m.stage));
    for (const stage of [
      ...TRAINED_STAGES,
      'data',
      'tokenizer',
      'latents',
      'reply_image',
      'export',
      'fixtures',
      'eval',
    ]) {
      expect(finished, `stage ${stage} did not finish`).toContain(stage);
    }
  });

  it.each(TRAINED_STAGES)('the %s loss fell', (stage) => {
    const losses = metrics
      .filter((m) => m.stage === stage && typeof m.loss === 'number')
      .map((m) => m.loss as number);
    expect(losses.length, `no loss logged for ${stage}`).toBeGreaterThanOrEqual(2);
    const tail = losses.slice(-3);
    const end = tail.reduce((a, b) => a + b, 0) / tail.length;
    expect(end, `${stage}: first ${losses[0]}, last ${tail.join(', ')}`).toBeLessThan(losses[0]!);
  });

  it('the GILL stage improved its held-out losses', () => {
    const val = metrics.filter((m) => m.stage === 'gill' && typeof m.val_loss === 'number');
    expect(val.length).toBeGreaterThanOrEqual(2);
    expect(val.at(-1)!.val_gen as number).toBeLessThan(val[0]!.val_gen as number);
    expect(val.at(-1)!.val_loss as number).toBeLessThan(val[0]!.val_loss as number);
  });

  it('exports graphs that load and match the manifest (the engine loader runs each on the manifest shapes)', async () => {
    const bundle = await loadBundle(out, { threads: 1 });
    try {
      const m = bundle.manifest;
      expect(m.gill.logitScale).toBeCloseTo(Math.log(1 / 0.07), 1); // learned, starts at ln(1/0.07), few smoke steps
      expect(m.lm.imgTokenIds).toHaveLength(8);
      expect(m.lm.imgTokenIds.at(-1)).toBe(m.lm.vocabSize - 1);
      // The paper's first decision model: [h_IMG0 ; best retrieval cosine].
      expect(bundle.decisionUsesRetrievalScore).toBe(true);
      // The reply-image head and the lexicon ship with every bundle the training writes.
      expect(m.gill.replyImage).toBe('reply_image.onnx');
      expect(bundle.sessions.replyImage).toBeDefined();
      expect(bundle.spelling).not.toBeNull();
    } finally {
      await bundle.close();
    }
  });

  it('writes fixtures whose shapes and token ids agree with the bundle', () => {
    const manifest = JSON.parse(readFileSync(path.join(out, 'manifest.json'), 'utf8'));
    const fx = JSON.parse(readFileSync(path.join(out, 'fixtures', 'fixtures.json'), 'utf8'));
    const { hiddenSize: H, imgTokenIds } = manifest.lm;
    const { textMaxLength: L, conditioningDim: Dc, latentChannels: C, latentSize: S } = manifest.diffusion;
    expect(fx.format).toBe('gill-fixtures/1');
    expect(fx.imgPrompt.imgHidden.dims).toEqual([imgTokenIds.length, H]);
    expect(fx.imgPrompt.mapperCond.dims).toEqual([L, Dc]);
    expect(fx.imgPrompt.textRetrievalEmbedding.dims).toEqual([manifest.gill.retrievalDim]);
    expect(fx.imgPrompt.decisionProbs.data.reduce((a: number, b: number) => a + b, 0)).toBeCloseTo(1, 5);
    expect(fx.decisionRetrievalScore).toBe(0.5);
    expect(fx.image.visualPrefix.dims).toEqual([1, manifest.gill.numVisualTokens, H]);
    expect(fx.diffusion.initialNoise.dims).toEqual([C, S, S]);
    expect(fx.imgPrompt.ids.slice(-imgTokenIds.length)).toEqual(imgTokenIds);
    const forced = fx.decode.find((d: { name: string }) => d.name === 'forced_image');
    expect(forced.imgPosition).toBe(0); // gen_scale_factor 1e5 forces [IMG0] first
    expect(forced.ids.slice(0, imgTokenIds.length)).toEqual(imgTokenIds);
    for (const f of ['scene.png', 'diffusion.png'])
      expect(existsSync(path.join(out, 'fixtures', f))).toBe(true);
    // The exported tokenizer.json, in the JS library the engine uses, gives the Python reference's ids.
    const tok = new Tokenizer(JSON.parse(readFileSync(path.join(out, 'tokenizer.json'), 'utf8')), {});
    for (const t of fx.tokens) expect(tok.encode(t.text, { add_special_tokens: true }).ids).toEqual(t.ids);
  });

  it('writes EVAL.md with every section', () => {
    const report = readFileSync(path.join(out, 'EVAL.md'), 'utf8');
    for (const section of [
      '## Captioning',
      '## Text→image retrieval',
      '## Generation',
      '## Context dependence',
      '## Decision head',
      '## Accuracy over training time',
    ]) {
      expect(report).toContain(section);
    }
  });

  it('names the culprit on bad input: missing or corrupt image, mismatched GILL checkpoint', () => {
    const corrupt = path.join(dir, 'corrupt.png');
    writeFileSync(corrupt, 'not a png');
    const script = `
import sys, torch
sys.path.insert(0, ${JSON.stringify(path.resolve('models/training'))})
from pathlib import Path
from gill_tiny import gill, gill_train, stages
from gill_tiny.presets import PRESETS, gill_config
for p in (${JSON.stringify(path.join(dir, 'missing.png'))}, ${JSON.stringify(corrupt)}):
    try:
        gill.load_image(Path(p)); print("no error for", p)
    except ValueError as e:
        print("ERR", e)
ctx = stages.Context(PRESETS["smoke"], torch.device("cpu"), Path(${JSON.stringify(work)}), Path("."), Path("."))
st = dict(ctx.load("gill")); st["shapes"] = {**st["shapes"], "lm_hidden": 999}
b = gill_train.backbones(ctx)
try:
    gill_train.load_gill_state(st, gill.GillModel(b, gill.build_heads(gill_config("smoke"), b)), Path("gill.pt"))
    print("no error for checkpoint")
except ValueError as e:
    print("ERR", e)
`;
    const res = spawnSync(PYTHON, ['-c', script], { encoding: 'utf8' });
    expect(res.status, res.stderr).toBe(0);
    const lines = res.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^ERR image file not found: .*missing\.png/);
    expect(lines[1]).toMatch(/^ERR cannot read image .*corrupt\.png/);
    expect(lines[2]).toMatch(
      /^ERR GILL checkpoint gill\.pt does not match the backbones \(lm_hidden: checkpoint 999/,
    );
  });
});
