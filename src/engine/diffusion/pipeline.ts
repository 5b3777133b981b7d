import { Tokenizer } from '@huggingface/tokenizers';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import type { JobProgress } from '../../jobs.ts';
import type { Bundle } from '../bundle.ts';
import { floatFeed, floatFetch, floatInput, floatOutput, inputType } from '../tensors.ts';
import { fillGaussian } from './noise.ts';
import { createSampler, type SchedulerName } from './schedulers/index.ts';
import { alphasCumprod } from './schedulers/schedule.ts';

/**
 * Text-to-image with the bundle's latent diffusion model, as a Stable Diffusion pipeline does it:
 * seeded Gaussian latent → UNet steps with classifier-free guidance (the unconditional branch is the text
 * encoder on "", as GILL uses it) → VAE decode → PNG. The conditioning comes from the GILLMapper or, on
 * the plain-prompt path, from `encodePrompt`.
 */

export interface GenerateOptions {
  bundle: Bundle;
  /** Conditioning token states [L, Dc] (a leading batch axis of 1 is fine). */
  conditioning: Float32Array;
  seed: number;
  /** Defaults from the bundle manifest. */
  steps?: number;
  guidance?: number;
  scheduler?: SchedulerName;
  /** The starting latent [C, h, w] instead of the seeded noise (reproduces a reference run). */
  initialLatent?: Float32Array;
  /**
   * Called after each step. `previewLatent` is the current clean-latent estimate [1, C, h, w]; it is reused
   * by the next step, so copy it to keep it (e.g. for `decodeLatent`). A returned promise is awaited before
   * the next step.
   */
  onStep?: (step: number, steps: number, previewLatent: Float32Array) => void | Promise<void>;
  /** Checked between steps; an abort rejects with the signal's reason. */
  signal?: AbortSignal;
}

export interface DecodedImage {
  width: number;
  height: number;
  /** Interleaved RGB, row-major, 3 bytes per pixel. */
  rgb: Uint8Array;
}

export interface GeneratedImage extends DecodedImage {
  png: Buffer;
  seed: number;
  steps: number;
  guidance: number;
  scheduler: SchedulerName;
  /** Wall time of the denoising loop and of the VAE decode, for benchmarks and logs. */
  timings: { denoiseMs: number; decodeMs: number };
}

/** Per-bundle state computed once: the text tokenizer, the unconditional embedding, the noise schedule. */
interface DiffusionState {
  tokenizer: Tokenizer;
  unconditional?: Promise<Float32Array>;
  alphas: Float64Array;
}

const states = new WeakMap<Bundle, DiffusionState>();

function stateOf(bundle: Bundle): DiffusionState {
  let state = states.get(bundle);
  if (!state) {
    state = {
      tokenizer: new Tokenizer(bundle.textTokenizerJson, {}),
      alphas: alphasCumprod(bundle.manifest.diffusion.scheduler),
    };
    states.set(bundle, state);
  }
  return state;
}

/** Token ids for the diffusion text encoder: [BOS] tokens [EOS], truncated and padded to textMaxLength. */
export function tokenizePrompt(bundle: Bundle, text: string): BigInt64Array {
  const d = bundle.manifest.diffusion;
  const ids = stateOf(bundle).tokenizer.encode(text, { add_special_tokens: false }).ids;
  const head = d.textBosId === null ? [] : [d.textBosId];
  const tail = d.textEosId === null ? [] : [d.textEosId];
  const room = d.textMaxLength - head.length - tail.length;
  const all = [...head, ...ids.slice(0, Math.max(room, 0)), ...tail];
  const out = new BigInt64Array(d.textMaxLength).fill(BigInt(d.textPadId));
  for (let i = 0; i < all.length; i++) out[i] = BigInt(all[i]!);
  return out;
}

/** The plain-prompt path: the diffusion text encoder's token states [L, Dc] for `text`. */
export async function encodePrompt(bundle: Bundle, text: string): Promise<Float32Array> {
  const d = bundle.manifest.diffusion;
  const ids = new ort.Tensor('int64', tokenizePrompt(bundle, text), [1, d.textMaxLength]);
  const out = await bundle.sessions.textEncoder.run({ input_ids: ids });
  return floatOutput(out.last_hidden_state!);
}

/** The unconditional branch of guidance: the text encoder on "", computed once per bundle. */
export function unconditionalEmbedding(bundle: Bundle): Promise<Float32Array> {
  const state = stateOf(bundle);
  state.unconditional ??= encodePrompt(bundle, '').catch((error: unknown) => {
    state.unconditional = undefined;
    throw error;
  });
  return state.unconditional;
}

function timestepTensor(bundle: Bundle, batch: number): { tensor: ort.Tensor; set(t: number): void } {
  const type = inputType(bundle.sessions.unet, 'timestep');
  if (type === 'int64') {
    const data = new BigInt64Array(batch);
    return { tensor: new ort.Tensor('int64', data, [batch]), set: (t) => data.fill(BigInt(t)) };
  }
  if (type === 'int32') {
    const data = new Int32Array(batch);
    return { tensor: new ort.Tensor('int32', data, [batch]), set: (t) => data.fill(t) };
  }
  const feed = floatFeed(bundle.sessions.unet, 'timestep', [batch]);
  return {
    tensor: feed.tensor,
    set: (t) => {
      feed.values.fill(t);
      feed.sync();
    },
  };
}

export async function generate(options: GenerateOptions): Promise<GeneratedImage> {
  const { bundle, seed, signal, onStep } = options;
  const m = bundle.manifest;
  const d = m.diffusion;
  const steps = options.steps ?? m.defaults.steps;
  const guidance = options.guidance ?? m.defaults.guidance;
  const schedulerName = options.scheduler ?? m.defaults.scheduler;
  const condSize = d.textMaxLength * d.conditioningDim;
  if (options.conditioning.length !== condSize) {
    throw new RangeError(
      `conditioning has ${options.conditioning.length} values, the bundle expects [${d.textMaxLength}, ${d.conditioningDim}] = ${condSize}`,
    );
  }
  const latentShape = [d.latentChannels, d.latentSize, d.latentSize];
  const n = d.latentChannels * d.latentSize * d.latentSize;
  if (options.initialLatent && options.initialLatent.length !== n) {
    throw new RangeError(
      `initialLatent has ${options.initialLatent.length} values, the bundle expects [${latentShape.join(', ')}]`,
    );
  }
  signal?.throwIfAborted();
  const state = stateOf(bundle);
  // The manifest's optional diffusers settings (timestep spacing, offset, final alpha, clipping) apply to every sampler.
  const sampler = createSampler(schedulerName, d.scheduler, steps, n, d.scheduler, state.alphas);

  // diffusers enables guidance only above 1; at 1 or below the conditional branch alone is the answer.
  const guided = guidance > 1;
  const batch = guided ? 2 : 1;
  const unet = bundle.sessions.unet;
  // Every buffer and tensor of the loop is made once; each step rewrites them in place.
  const hidden = floatFeed(unet, 'encoder_hidden_states', [batch, d.textMaxLength, d.conditioningDim]);
  if (guided) {
    hidden.values.set(await unconditionalEmbedding(bundle), 0);
    hidden.values.set(options.conditioning, condSize);
  } else {
    hidden.values.set(options.conditioning);
  }
  hidden.sync();

  const sample = options.initialLatent
    ? Float32Array.from(options.initialLatent)
    : fillGaussian(new Float32Array(n), seed);
  const modelIn = floatFeed(unet, 'sample', [batch, ...latentShape]);
  const guidedOut = guided ? new Float32Array(n) : null;
  const timestep = timestepTensor(bundle, batch);
  const feeds = { sample: modelIn.tensor, encoder_hidden_states: hidden.tensor, timestep: timestep.tensor };
  // The UNet writes its prediction straight into this tensor (a pre-allocated output).
  const noisePred = floatFetch(unet, 'noise_pred', [batch, ...latentShape]);
  const fetches = { noise_pred: noisePred.tensor };

  const started = performance.now();
  for (let i = 0; i < sampler.timesteps.length; i++) {
    signal?.throwIfAborted();
    for (let b = 0; b < batch; b++) modelIn.values.set(sample, b * n);
    modelIn.sync();
    timestep.set(sampler.timesteps[i]!);
    await unet.run(feeds, fetches);
    const pred = noisePred.read();
    let modelOutput = pred;
    if (guidedOut) {
      // [uncond; cond] → uncond + g · (cond − uncond)
      for (let k = 0; k < n; k++) {
        const u = pred[k]!;
        guidedOut[k] = u + guidance * (pred[n + k]! - u);
      }
      modelOutput = guidedOut;
    }
    sampler.step(modelOutput, sample);
    await onStep?.(i + 1, sampler.timesteps.length, sampler.denoised);
  }
  const denoiseMs = performance.now() - started;
  signal?.throwIfAborted();

  const decodeStart = performance.now();
  const image = await decodeLatent(bundle, sample);
  const png = await encodePng(image);
  const decodeMs = performance.now() - decodeStart;
  return {
    ...image,
    png,
    seed,
    steps: sampler.timesteps.length,
    guidance,
    scheduler: schedulerName,
    timings: { denoiseMs, decodeMs },
  };
}

/** VAE-decodes a latent [C, h, w] (unscaled by the manifest's scaling factor) into RGB bytes. */
export async function decodeLatent(bundle: Bundle, latent: Float32Array): Promise<DecodedImage> {
  const d = bundle.manifest.diffusion;
  const scaled = new Float32Array(latent.length);
  const inv = 1 / d.vaeScalingFactor;
  for (let i = 0; i < latent.length; i++) scaled[i] = latent[i]! * inv;
  const vae = bundle.sessions.vaeDecoder;
  const input = floatInput(vae, 'latent', scaled, [1, d.latentChannels, d.latentSize, d.latentSize]);
  const out = await vae.run({ latent: input });
  const planes = floatOutput(out.image!);
  const size = d.imageSize;
  const area = size * size;
  // [-1, 1] planar → [0, 255] interleaved. A clamped array clamps and rounds half to even, as
  // diffusers' (x / 2 + 0.5).clamp(0, 1) · 255 followed by numpy's round does.
  const pixels = new Uint8ClampedArray(area * 3);
  for (let c = 0; c < 3; c++) {
    for (let p = 0; p < area; p++) pixels[p * 3 + c] = (planes[c * area + p]! * 0.5 + 0.5) * 255;
  }
  const rgb = new Uint8Array(pixels.buffer);
  return { width: size, height: size, rgb };
}

export function encodePng(image: DecodedImage): Promise<Buffer> {
  return sharp(image.rgb, { raw: { width: image.width, height: image.height, channels: 3 } })
    .png()
    .toBuffer();
}

/**
 * Progress reporting for a generation, with a few previews of the forming image: at evenly spaced steps
 * (not the last) the sampler's clean-latent estimate is VAE-decoded to a PNG before the next step, so a
 * chat shows the image taking shape and steps arrive in order. Costs `previews` extra VAE decodes.
 */
export function progressWithPreviews(
  bundle: Bundle,
  report: (progress: JobProgress) => void,
  previews = 4,
): NonNullable<GenerateOptions['onStep']> {
  return async (step, steps, previewLatent) => {
    const every = Math.max(1, Math.floor(steps / (previews + 1)));
    if (step % every !== 0 || step === steps) {
      report({ stage: 'generating', step, steps });
      return;
    }
    try {
      const png = await encodePng(await decodeLatent(bundle, previewLatent));
      report({ stage: 'generating', step, steps, previewPng: png.toString('base64') });
    } catch {
      report({ stage: 'generating', step, steps }); // a preview is a nicety: the step still counts
    }
  };
}
