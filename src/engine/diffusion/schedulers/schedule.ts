/**
 * What every sampler shares: the training noise schedule (alphas_cumprod, rounded to float32 the way torch
 * stores it), diffusers' inference timestep spacings, and the conversion of a model output into clean-sample
 * and noise estimates. The samplers, one per file beside this one, follow diffusers' schedulers so a bundle
 * exported from a diffusers pipeline samples the same trajectory here.
 */

export type BetaSchedule = 'linear' | 'scaled_linear' | 'squaredcos_cap_v2';
export type PredictionType = 'epsilon' | 'v_prediction' | 'sample';
export type TimestepSpacing = 'linspace' | 'leading' | 'trailing';

/** The training noise schedule, as in the bundle manifest's `diffusion.scheduler`. */
export interface NoiseScheduleConfig {
  numTrainTimesteps: number;
  betaSchedule: BetaSchedule;
  betaStart: number;
  betaEnd: number;
  predictionType: PredictionType;
}

export interface SamplerOptions {
  /** How inference timesteps are picked; defaults as in diffusers (DDIM, PNDM: leading; DPM-Solver++: linspace). */
  timestepSpacing?: TimestepSpacing;
  /** Added to "leading" timesteps (Stable Diffusion's config uses 1). Default 0. */
  stepsOffset?: number;
  /** DDIM, PNDM: the "previous" alpha of the last step is 1 (true) or alphas_cumprod[0] (false); diffusers' default (DDIM true, PNDM false) when unset. */
  setAlphaToOne?: boolean;
  /** DDIM: clamp the clean-sample estimate to [-1, 1] (diffusers' clip_sample; pixel-space models). Default false. */
  clipSample?: boolean;
  /** DPM-Solver++: the final sigma is 0 (fully denoised) or the smallest training sigma. Default 'zero'. */
  finalSigmas?: 'zero' | 'sigma_min';
}

/** A sampler for one generation: call `step` once per entry of `timesteps`, in order. */
export interface Sampler {
  /** The model timestep of each step, descending. */
  readonly timesteps: readonly number[];
  /** The model's estimate of the clean sample at the last step (for progress previews). */
  readonly denoised: Float32Array;
  /** Advances `sample` (in place) by one step, given the model output for it at `timesteps[i]`. */
  step(modelOutput: Float32Array, sample: Float32Array): void;
}

export const f32 = Math.fround;

/** torch.linspace(start, end, n, dtype=float32), to float32 rounding. */
function linspace32(start: number, end: number, n: number): number[] {
  if (n === 1) return [f32(start)];
  const step = (end - start) / (n - 1);
  return Array.from({ length: n }, (_, i) => f32(i < n / 2 ? start + step * i : end - step * (n - 1 - i)));
}

/** The betas of a training schedule (float32 values, as diffusers builds them). */
export function betaSchedule(cfg: NoiseScheduleConfig): Float64Array {
  const n = cfg.numTrainTimesteps;
  switch (cfg.betaSchedule) {
    case 'linear':
      return Float64Array.from(linspace32(cfg.betaStart, cfg.betaEnd, n));
    case 'scaled_linear':
      return Float64Array.from(linspace32(Math.sqrt(cfg.betaStart), Math.sqrt(cfg.betaEnd), n), (b) =>
        f32(b * b),
      );
    case 'squaredcos_cap_v2': {
      // Nichol & Dhariwal's cosine schedule: beta_i = 1 - abar((i+1)/n) / abar(i/n), capped at 0.999.
      const alphaBar = (t: number) => Math.cos(((t + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
      return Float64Array.from({ length: n }, (_, i) =>
        f32(Math.min(1 - alphaBar((i + 1) / n) / alphaBar(i / n), 0.999)),
      );
    }
    default:
      throw new Error(`unknown beta schedule "${cfg.betaSchedule as string}"`);
  }
}

/** alphas_cumprod: the product of (1 - beta) up to each training timestep (torch: double accumulator, float32 stored). */
export function alphasCumprod(cfg: NoiseScheduleConfig): Float64Array {
  const betas = betaSchedule(cfg);
  const out = new Float64Array(betas.length);
  let acc = 1;
  for (let i = 0; i < betas.length; i++) {
    acc *= f32(1 - betas[i]!);
    out[i] = f32(acc);
  }
  return out;
}

/** Inference timesteps, descending, for DDIM and PNDM (diffusers' DDIMScheduler/PNDMScheduler.set_timesteps). */
export function ddimTimesteps(
  numTrain: number,
  steps: number,
  spacing: TimestepSpacing,
  stepsOffset = 0,
): number[] {
  checkSteps(numTrain, steps);
  switch (spacing) {
    case 'linspace':
      return Array.from({ length: steps }, (_, i) =>
        roundHalfEven(((numTrain - 1) * i) / Math.max(steps - 1, 1)),
      ).reverse();
    case 'leading': {
      const ratio = Math.floor(numTrain / steps);
      return Array.from({ length: steps }, (_, i) => i * ratio + stepsOffset).reverse();
    }
    case 'trailing': {
      // np.arange(N, 0, -N / steps): its length and values computed as numpy does.
      const ratio = numTrain / steps;
      const count = Math.ceil((0 - numTrain) / -ratio);
      return Array.from({ length: count }, (_, k) => roundHalfEven(numTrain - k * ratio) - 1);
    }
  }
}

/** Inference timesteps, descending, for DPM-Solver++ (diffusers' DPMSolverMultistepScheduler.set_timesteps). */
export function dpmTimesteps(
  numTrain: number,
  steps: number,
  spacing: TimestepSpacing,
  stepsOffset = 0,
): number[] {
  checkSteps(numTrain, steps);
  switch (spacing) {
    case 'linspace':
      // linspace(0, N-1, steps+1), rounded, reversed, without its last (t = 0) entry.
      return Array.from({ length: steps + 1 }, (_, i) => roundHalfEven(((numTrain - 1) * i) / steps))
        .reverse()
        .slice(0, steps);
    case 'leading': {
      const ratio = Math.floor(numTrain / (steps + 1));
      return Array.from({ length: steps + 1 }, (_, i) => i * ratio + stepsOffset)
        .reverse()
        .slice(0, steps);
    }
    case 'trailing':
      return ddimTimesteps(numTrain, steps, 'trailing');
  }
}

function checkSteps(numTrain: number, steps: number): void {
  if (!Number.isInteger(steps) || steps < 1 || steps > numTrain) {
    throw new RangeError(
      `steps must be an integer from 1 to ${numTrain} (the training timesteps), got ${steps}`,
    );
  }
}

/** numpy's round (half to even), which the reference uses for timestep arithmetic. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Converts a model output at noise level (alpha, sigma) into the clean-sample and noise estimates' coefficients. */
export function predictionCoefficients(
  type: PredictionType,
  alpha: number,
  sigma: number,
): { x0: [number, number]; eps: [number, number] } {
  // Each pair [a, b] means estimate = a * sample + b * modelOutput.
  switch (type) {
    case 'epsilon':
      return { x0: [1 / alpha, -sigma / alpha], eps: [0, 1] };
    case 'v_prediction':
      return { x0: [alpha, -sigma], eps: [sigma, alpha] };
    case 'sample':
      return { x0: [0, 1], eps: [1 / sigma, -alpha / sigma] };
  }
}
