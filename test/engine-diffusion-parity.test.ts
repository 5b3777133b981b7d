import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Bundle, loadBundle } from '../src/engine/bundle.ts';
import {
  encodePrompt,
  generate,
  tokenizePrompt,
  unconditionalEmbedding,
} from '../src/engine/diffusion/pipeline.ts';

/**
 * Parity of the TypeScript diffusion pipeline with the PyTorch reference (models/training), on the golden
 * fixtures of the trained tiny bundle (<bundle>/fixtures/fixtures.json, written by gill_tiny/fixtures.py):
 * the same conditioning, initial noise, steps and guidance must give the reference image to ≥ 40 dB PSNR.
 */

const BUNDLE = path.resolve(process.env.GILL_PARITY_BUNDLE ?? 'models/gill-tiny');
const FIXTURES = path.join(BUNDLE, 'fixtures', 'fixtures.json');
const HAVE_FIXTURES = existsSync(FIXTURES);
// The fixtures come with the trained bundle (as for test/engine-tiny.test.ts): until then, skipped loudly.
if (!HAVE_FIXTURES)
  console.warn(`\n*** SKIPPING diffusion parity tests: no golden fixtures at ${FIXTURES} yet ***\n`);

interface FixtureTensor {
  dims: number[];
  data: number[];
}
interface Fixtures {
  textEncoderTokens: { text: string; ids: number[] }[];
  imgPrompt: { mapperCond: FixtureTensor };
  diffusion: {
    seed: number;
    steps: number;
    guidance: number;
    scheduler: 'ddim' | 'dpm++';
    prompt: string;
    cond: string;
    uncond: FixtureTensor;
    initialNoise: FixtureTensor;
    file: string;
  };
}

function psnr(a: Uint8Array, b: Uint8Array): number {
  let se = 0;
  for (let i = 0; i < a.length; i++) se += (a[i]! - b[i]!) ** 2;
  const mse = se / a.length;
  return mse === 0 ? Number.POSITIVE_INFINITY : 10 * Math.log10((255 * 255) / mse);
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}

/** A fixture field named by a dotted path, e.g. "imgPrompt.mapperCond". */
function field(fx: Fixtures, dotted: string): FixtureTensor {
  const value = dotted.split('.').reduce<unknown>((obj, key) => (obj as Record<string, unknown>)?.[key], fx);
  if (!value || !Array.isArray((value as FixtureTensor).data))
    throw new Error(`fixtures.json has no tensor at ${dotted}`);
  return value as FixtureTensor;
}

describe.skipIf(!HAVE_FIXTURES)('diffusion parity with the PyTorch reference', () => {
  let bundle: Bundle;
  let fx: Fixtures;

  beforeAll(async () => {
    fx = JSON.parse(await readFile(FIXTURES, 'utf8')) as Fixtures;
    bundle = await loadBundle(BUNDLE, { threads: 2 });
  });
  afterAll(async () => {
    await bundle?.close();
  });

  it('tokenizes text-encoder prompts as the reference does', () => {
    for (const { text, ids } of fx.textEncoderTokens) {
      expect([...tokenizePrompt(bundle, text)].map(Number), JSON.stringify(text)).toEqual(ids);
    }
  });

  it('computes the unconditional embedding (text encoder on "") as the reference does', async () => {
    const uncond = await unconditionalEmbedding(bundle);
    expect(uncond.length).toBe(fx.diffusion.uncond.data.length);
    expect(maxAbsDiff(uncond, fx.diffusion.uncond.data)).toBeLessThan(1e-4);
  });

  it('reproduces the reference diffusion run (fixed noise, steps, guidance) to ≥ 40 dB PSNR', async () => {
    const d = fx.diffusion;
    const image = await generate({
      bundle,
      conditioning: Float32Array.from(field(fx, d.cond).data),
      initialLatent: Float32Array.from(d.initialNoise.data),
      seed: d.seed,
      steps: d.steps,
      guidance: d.guidance,
      scheduler: d.scheduler,
    });
    const { data, info } = await sharp(path.join(BUNDLE, 'fixtures', d.file))
      .removeAlpha()
      .raw()
      .toBuffer({ resolveWithObject: true });
    expect([info.width, info.height]).toEqual([image.width, image.height]);
    const reference = new Uint8Array(data);
    const db = psnr(image.rgb, reference);
    let sum = 0;
    for (let i = 0; i < reference.length; i++) sum += Math.abs(image.rgb[i]! - reference[i]!);
    const meanAbs = sum / reference.length;
    const maxAbs = maxAbsDiff(image.rgb, reference);
    console.log(
      `diffusion parity: PSNR ${db.toFixed(2)} dB, mean |Δ| ${meanAbs.toFixed(3)}, max |Δ| ${maxAbs} over ${d.steps} ${d.scheduler} steps, guidance ${d.guidance}`,
    );
    expect(db).toBeGreaterThanOrEqual(40);
    // The fixture's own tolerance (fixtures/README.md).
    expect(meanAbs).toBeLessThanOrEqual(1);
    expect(maxAbs).toBeLessThanOrEqual(8);
  });

  it('gives the same image for the same seed on the plain-prompt path, another for another seed', async () => {
    const conditioning = await encodePrompt(bundle, fx.diffusion.prompt);
    const run = (seed: number) => generate({ bundle, conditioning, seed, steps: 6 });
    const [a, b, c] = [await run(7), await run(7), await run(8)];
    expect(a.png.equals(b.png)).toBe(true);
    expect(psnr(a.rgb, c.rgb)).toBeLessThan(40);
  });
});
