import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Bundle, loadBundle } from '../src/engine/bundle.ts';
import { fillGaussian } from '../src/engine/diffusion/noise.ts';
import {
  decodeLatent,
  encodePrompt,
  generate,
  progressWithPreviews,
  tokenizePrompt,
  unconditionalEmbedding,
} from '../src/engine/diffusion/pipeline.ts';
import { createSampler } from '../src/engine/diffusion/schedulers/index.ts';
import type { JobProgress } from '../src/jobs.ts';
import { makeRandomBundle, torchAvailable } from './support/random-bundle.ts';

const torchUp = await torchAvailable();

/** The pipeline's plumbing on a bundle of small random graphs (test/support/random_bundle.py). */
describe.skipIf(!torchUp)('diffusion pipeline on a random bundle', () => {
  let made: Awaited<ReturnType<typeof makeRandomBundle>>;
  let bundle: Bundle;

  beforeAll(async () => {
    made = await makeRandomBundle(3);
    bundle = await loadBundle(made.dir, { threads: 1 });
  });
  afterAll(async () => {
    await bundle?.close();
    await made?.remove();
  });

  const d = () => bundle.manifest.diffusion;

  it('tokenizes prompts to textMaxLength with the manifest pad, BOS and EOS ids', () => {
    const L = d().textMaxLength;
    const ids = tokenizePrompt(bundle, 'ab');
    expect(ids.length).toBe(L);
    expect(ids[0]).not.toBe(BigInt(d().textPadId));
    expect(ids.slice(2)).toEqual(new BigInt64Array(L - 2).fill(BigInt(d().textPadId)));
    // A long prompt is truncated, and BOS/EOS framing keeps the EOS.
    const framed = {
      ...bundle,
      manifest: { ...bundle.manifest, diffusion: { ...d(), textBosId: 1, textEosId: 2 } },
    };
    const long = tokenizePrompt(framed, 'x'.repeat(500));
    expect(long.length).toBe(L);
    expect(long[0]).toBe(1n);
    expect(long[L - 1]).toBe(2n);
    const empty = tokenizePrompt(framed, '');
    expect([...empty.slice(0, 3)]).toEqual([1n, 2n, BigInt(d().textPadId)]);
  });

  it('computes the unconditional branch once, as the text encoder on ""', async () => {
    const first = unconditionalEmbedding(bundle);
    expect(unconditionalEmbedding(bundle)).toBe(first);
    expect(await first).toEqual(await encodePrompt(bundle, ''));
    expect((await first).length).toBe(d().textMaxLength * d().conditioningDim);
  });

  it('reports every step in order, with a few PNG previews of the forming image before the last', async () => {
    const updates: JobProgress[] = [];
    const conditioning = await encodePrompt(bundle, 'ab');
    const image = await generate({
      bundle,
      conditioning,
      seed: 5,
      steps: 6,
      guidance: 3,
      onStep: progressWithPreviews(bundle, (p) => updates.push(p), 2),
    });
    const steps = updates.map((u) => (u.stage === 'generating' ? u.step : -1));
    expect(steps).toEqual([1, 2, 3, 4, 5, 6]);
    const previews = updates.flatMap((u) => (u.stage === 'generating' && u.previewPng ? [u] : []));
    expect(previews.map((u) => (u.stage === 'generating' ? u.step : 0))).toEqual([2, 4]);
    for (const preview of previews) {
      const meta = await sharp(
        Buffer.from(preview.stage === 'generating' ? preview.previewPng! : '', 'base64'),
      ).metadata();
      expect([meta.format, meta.width, meta.height]).toEqual(['png', image.width, image.height]);
    }
  });

  it('reproduces an image from its seed, and another seed gives another image', async () => {
    const cond = await encodePrompt(bundle, 'a red square');
    const a = await generate({ bundle, conditioning: cond, seed: 11, steps: 3, guidance: 4 });
    const b = await generate({ bundle, conditioning: cond, seed: 11, steps: 3, guidance: 4 });
    const c = await generate({ bundle, conditioning: cond, seed: 12, steps: 3, guidance: 4 });
    expect(a.rgb).toEqual(b.rgb);
    expect(a.png.equals(b.png)).toBe(true);
    expect(a.rgb).not.toEqual(c.rgb);
    const meta = await sharp(a.png).metadata();
    expect([meta.format, meta.width, meta.height, meta.channels]).toEqual([
      'png',
      d().imageSize,
      d().imageSize,
      3,
    ]);
    const { data } = await sharp(a.png).raw().toBuffer({ resolveWithObject: true });
    expect(new Uint8Array(data)).toEqual(a.rgb);
    expect(a).toMatchObject({ seed: 11, steps: 3, guidance: 4, scheduler: 'ddim' });
  });

  it('guides with [uncond; cond] in one batch: one step equals the separately computed guided step', async () => {
    const cond = await encodePrompt(bundle, 'blue');
    const uncond = await unconditionalEmbedding(bundle);
    const n = d().latentChannels * d().latentSize ** 2;
    const latent = fillGaussian(new Float32Array(n), 5);
    const guidance = 3.5;
    for (const scheduler of ['ddim', 'dpm++'] as const) {
      const image = await generate({
        bundle,
        conditioning: cond,
        seed: 0,
        initialLatent: latent,
        steps: 1,
        guidance,
        scheduler,
      });

      // The same step by hand: two batch-1 UNet calls, the guidance formula, one sampler step.
      const sampler = createSampler(scheduler, d().scheduler, 1, n);
      const t = sampler.timesteps[0]!;
      const eps = async (hidden: Float32Array) => {
        const out = await bundle.sessions.unet.run({
          sample: new ort.Tensor('float32', Float32Array.from(latent), [
            1,
            d().latentChannels,
            d().latentSize,
            d().latentSize,
          ]),
          timestep: new ort.Tensor('int64', BigInt64Array.of(BigInt(t)), [1]),
          encoder_hidden_states: new ort.Tensor('float32', hidden, [
            1,
            d().textMaxLength,
            d().conditioningDim,
          ]),
        });
        return (out.noise_pred as ort.Tensor).data as Float32Array;
      };
      const [u, c] = [await eps(uncond), await eps(cond)];
      const guided = u.map((v, i) => v + guidance * (c[i]! - v));
      const sample = Float32Array.from(latent);
      sampler.step(guided, sample);
      const expected = await decodeLatent(bundle, sample);
      expect(image.rgb).toEqual(expected.rgb);
    }
  });

  it('reports every step with a preview latent and stops between steps when aborted', async () => {
    const cond = await encodePrompt(bundle, 'green');
    const seen: number[] = [];
    const n = d().latentChannels * d().latentSize ** 2;
    await generate({
      bundle,
      conditioning: cond,
      seed: 1,
      steps: 5,
      scheduler: 'dpm++',
      onStep: (step, steps, preview) => {
        expect(steps).toBe(5);
        expect(preview.length).toBe(n);
        seen.push(step);
      },
    });
    expect(seen).toEqual([1, 2, 3, 4, 5]);

    const controller = new AbortController();
    const calls: number[] = [];
    const pending = generate({
      bundle,
      conditioning: cond,
      seed: 1,
      steps: 6,
      signal: controller.signal,
      onStep: (step) => {
        calls.push(step);
        if (step === 2) controller.abort(new Error('cancelled by the user'));
      },
    });
    await expect(pending).rejects.toThrow('cancelled by the user');
    expect(calls).toEqual([1, 2]);
    // The sessions stay usable after an abort.
    const after = await generate({ bundle, conditioning: cond, seed: 1, steps: 2 });
    expect(after.rgb.length).toBe(d().imageSize ** 2 * 3);
  });

  it('without guidance (scale ≤ 1) runs the conditional branch alone', async () => {
    const cond = await encodePrompt(bundle, 'yellow');
    const n = d().latentChannels * d().latentSize ** 2;
    const latent = fillGaussian(new Float32Array(n), 9);
    const image = await generate({
      bundle,
      conditioning: cond,
      seed: 0,
      initialLatent: latent,
      steps: 1,
      guidance: 1,
    });
    const sampler = createSampler('ddim', d().scheduler, 1, n);
    const out = await bundle.sessions.unet.run({
      sample: new ort.Tensor('float32', Float32Array.from(latent), [
        1,
        d().latentChannels,
        d().latentSize,
        d().latentSize,
      ]),
      timestep: new ort.Tensor('int64', BigInt64Array.of(BigInt(sampler.timesteps[0]!)), [1]),
      encoder_hidden_states: new ort.Tensor('float32', cond, [1, d().textMaxLength, d().conditioningDim]),
    });
    const sample = Float32Array.from(latent);
    sampler.step((out.noise_pred as ort.Tensor).data as Float32Array, sample);
    expect(image.rgb).toEqual((await decodeLatent(bundle, sample)).rgb);
  });

  it('rejects conditioning, latents and step counts of the wrong size with a clear error', async () => {
    const cond = await encodePrompt(bundle, 'x');
    await expect(generate({ bundle, conditioning: cond.subarray(1), seed: 1 })).rejects.toThrow(
      `conditioning has ${cond.length - 1} values, the bundle expects [${d().textMaxLength}, ${d().conditioningDim}]`,
    );
    await expect(
      generate({ bundle, conditioning: cond, seed: 1, initialLatent: new Float32Array(3) }),
    ).rejects.toThrow(/initialLatent has 3 values/);
    await expect(generate({ bundle, conditioning: cond, seed: 1, steps: 0 })).rejects.toThrow(
      /steps must be/,
    );
  });
});
