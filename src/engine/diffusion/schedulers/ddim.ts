import {
  ddimTimesteps,
  type NoiseScheduleConfig,
  predictionCoefficients,
  type Sampler,
  type SamplerOptions,
} from './schedule.ts';

/**
 * diffusers' DDIMScheduler with eta = 0 (Song et al. 2021, "Denoising Diffusion Implicit Models"):
 * deterministic, x_prev = sqrt(abar_prev) * x0 + sqrt(1 - abar_prev) * eps.
 */
export class DdimSampler implements Sampler {
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
