/**
 * Diffusion samplers with the semantics of Hugging Face diffusers' DDIMScheduler (eta = 0) and
 * DPMSolverMultistepScheduler (DPM-Solver++ 2M, midpoint), so a bundle exported from a diffusers pipeline
 * samples the same trajectory here. Written from the math; the sample arrays are updated in place, and
 * the noise schedule (alphas_cumprod) is rounded to float32 the way torch stores it.
 */

export type BetaSchedule = 'linear' | 'scaled_linear' | 'squaredcos_cap_v2';
export type PredictionType = 'epsilon' | 'v_prediction' | 'sample';
export type TimestepSpacing = 'linspace' | 'leading' | 'trailing';
export type SchedulerName = 'ddim' | 'dpm++';

/** The training noise schedule, as in the bundle manifest's `diffusion.scheduler`. */
export interface NoiseScheduleConfig {
  numTrainTimesteps: number;
  betaSchedule: BetaSchedule;
  betaStart: number;
  betaEnd: number;
  predictionType: PredictionType;
}

export interface SamplerOptions {
  /** How inference timesteps are picked; defaults as in diffusers (DDIM: leading, DPM-Solver++: linspace). */
  timestepSpacing?: TimestepSpacing;
  /** Added to "leading" timesteps (Stable Diffusion's config uses 1). Default 0. */
  stepsOffset?: number;
  /** DDIM: the "previous" alpha of the last step is 1 (true) or alphas_cumprod[0] (false). Default true. */
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

const f32 = Math.fround;

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

/** Inference timesteps, descending, for DDIM (diffusers' DDIMScheduler.set_timesteps). */
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
function predictionCoefficients(
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

/** DDIM with eta = 0: deterministic, x_prev = sqrt(abar_prev) * x0 + sqrt(1 - abar_prev) * eps. */
class DdimSampler implements Sampler {
  readonly timesteps: number[];
  readonly denoised: Float32Array;
  private index = 0;
  private readonly stride: number;
  private readonly finalAlpha: number;
  private readonly clip: boolean;

  constructor(
    private readonly cfg: NoiseScheduleConfig,
    private readonly alphas: Float64Array,
    steps: number,
    size: number,
    options: SamplerOptions,
  ) {
    this.timesteps = ddimTimesteps(
      cfg.numTrainTimesteps,
      steps,
      options.timestepSpacing ?? 'leading',
      options.stepsOffset ?? 0,
    );
    this.stride = Math.floor(cfg.numTrainTimesteps / steps);
    this.finalAlpha = (options.setAlphaToOne ?? true) ? 1 : alphas[0]!;
    this.clip = options.clipSample ?? false;
    this.denoised = new Float32Array(size);
  }

  step(modelOutput: Float32Array, sample: Float32Array): void {
    const t = this.timesteps[this.index];
    if (t === undefined) throw new Error('DDIM: step called more times than there are timesteps');
    this.index++;
    // diffusers steps back by N // steps whatever the spacing.
    const prev = t - this.stride;
    const abar = this.alphas[t]!;
    const abarPrev = prev >= 0 ? this.alphas[prev]! : this.finalAlpha;
    const c = predictionCoefficients(this.cfg.predictionType, Math.sqrt(abar), Math.sqrt(1 - abar));
    const [xa, xb] = c.x0;
    const [ea, eb] = c.eps;
    const keep = Math.sqrt(abarPrev);
    const noise = Math.sqrt(1 - abarPrev);
    const x0 = this.denoised;
    for (let i = 0; i < sample.length; i++) {
      const x = sample[i]!;
      const m = modelOutput[i]!;
      let clean = xa * x + xb * m;
      // Clipping changes the clean estimate only; the noise estimate stays the model's (diffusers' default).
      if (this.clip) clean = Math.max(-1, Math.min(1, clean));
      x0[i] = clean;
      sample[i] = keep * clean + noise * (ea * x + eb * m);
    }
  }
}

/**
 * DPM-Solver++ (2M): a second-order multistep solver of the diffusion ODE in log-SNR time on the
 * data-prediction model; first order on the first step and on the final step (diffusers' lower_order_final).
 */
class DpmSolverPlusPlusSampler implements Sampler {
  readonly timesteps: number[];
  /** Noise level sigma = sqrt((1 - abar) / abar) at each step, plus the final one. */
  private readonly sigmas: number[];
  private current: Float32Array;
  private previous: Float32Array;
  private index = 0;
  private lowerOrderNums = 0;
  private readonly finalZero: boolean;

  constructor(
    private readonly cfg: NoiseScheduleConfig,
    alphas: Float64Array,
    steps: number,
    size: number,
    options: SamplerOptions,
  ) {
    this.timesteps = dpmTimesteps(
      cfg.numTrainTimesteps,
      steps,
      options.timestepSpacing ?? 'linspace',
      options.stepsOffset ?? 0,
    );
    const sigmaAt = (abar: number) => f32(Math.sqrt((1 - abar) / abar));
    this.finalZero = (options.finalSigmas ?? 'zero') === 'zero';
    this.sigmas = [
      ...this.timesteps.map((t) => sigmaAt(alphas[t]!)),
      this.finalZero ? 0 : sigmaAt(alphas[0]!),
    ];
    this.current = new Float32Array(size);
    this.previous = new Float32Array(size);
  }

  get denoised(): Float32Array {
    return this.current;
  }

  step(modelOutput: Float32Array, sample: Float32Array): void {
    const i = this.index;
    if (i >= this.timesteps.length)
      throw new Error('DPM-Solver++: step called more times than there are timesteps');
    this.index++;
    // The history holds the last two clean-sample estimates; the older buffer takes the new one.
    const x0 = this.previous;
    this.previous = this.current;
    this.current = x0;

    const sigmaS = this.sigmas[i]!;
    const alphaS = 1 / Math.sqrt(sigmaS * sigmaS + 1);
    const c = predictionCoefficients(this.cfg.predictionType, alphaS, sigmaS * alphaS);
    const [xa, xb] = c.x0;
    for (let k = 0; k < sample.length; k++) x0[k] = xa * sample[k]! + xb * modelOutput[k]!;

    const last = i === this.timesteps.length - 1;
    const lowerOrderFinal = last && (this.timesteps.length < 15 || this.finalZero);
    const sigmaT = this.sigmas[i + 1]!;
    const alphaT = 1 / Math.sqrt(sigmaT * sigmaT + 1);
    // lambda = log(alpha / sigma_t) = -log(sigma); h is the step in lambda (infinite when sigma_t = 0).
    const h = Math.log(sigmaS) - Math.log(sigmaT);
    // x_t = (sigma_t / sigma_s) x_s - phi D with the VP noise levels sigma_vp = sigma * alpha.
    const ratio = (sigmaT * alphaT) / (sigmaS * alphaS);
    const phi = alphaT * (Math.exp(-h) - 1);

    if (this.lowerOrderNums < 1 || lowerOrderFinal) {
      for (let k = 0; k < sample.length; k++) sample[k] = ratio * sample[k]! - phi * x0[k]!;
    } else {
      // Midpoint second order: D = x0 + (x0 - x0_prev) / (2 r), r = h_prev / h.
      const sigmaPrev = this.sigmas[i - 1]!;
      const r = (Math.log(sigmaPrev) - Math.log(sigmaS)) / h;
      const d1 = 0.5 / r;
      const prev = this.previous;
      for (let k = 0; k < sample.length; k++) {
        const d = x0[k]!;
        sample[k] = ratio * sample[k]! - phi * (d + d1 * (d - prev[k]!));
      }
    }
    if (this.lowerOrderNums < 2) this.lowerOrderNums++;
  }
}

/** A sampler for `steps` inference steps over samples of `size` values. */
export function createSampler(
  name: SchedulerName,
  cfg: NoiseScheduleConfig,
  steps: number,
  size: number,
  options: SamplerOptions = {},
  alphas: Float64Array = alphasCumprod(cfg),
): Sampler {
  switch (name) {
    case 'ddim':
      return new DdimSampler(cfg, alphas, steps, size, options);
    case 'dpm++':
      return new DpmSolverPlusPlusSampler(cfg, alphas, steps, size, options);
    default:
      throw new Error(`unknown scheduler "${name as string}" (expected ddim or dpm++)`);
  }
}
