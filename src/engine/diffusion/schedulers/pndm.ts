import {
  ddimTimesteps,
  type NoiseScheduleConfig,
  predictionCoefficients,
  type Sampler,
  type SamplerOptions,
} from './schedule.ts';

/**
 * diffusers' PNDMScheduler with skip_prk_steps = True, as Stable Diffusion 1.5's pipeline configures it: the
 * pseudo linear multistep (PLMS) part of Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on
 * Manifolds", without the Runge-Kutta warm-up. It runs one more model evaluation than `steps`: the second
 * timestep repeats, and that step redoes the first with the average of the two noise estimates.
 */
export class PndmSampler implements Sampler {
  readonly timesteps: number[];
  readonly denoised: Float32Array;
  private index = 0;
  /** Model outputs of the steps so far (the repeated step's excluded), newest last, at most 4. */
  private ets: Float32Array[] = [];
  /** The sample the first step started from; the repeated second step starts from it again. */
  private firstSample: Float32Array | null = null;
  private readonly stride: number;
  private readonly finalAlpha: number;
  private readonly combined: Float32Array;

  constructor(
    private readonly cfg: NoiseScheduleConfig,
    private readonly alphas: Float64Array,
    steps: number,
    size: number,
    options: SamplerOptions,
  ) {
    if (cfg.predictionType === 'sample')
      throw new Error('PNDM takes epsilon or v_prediction model outputs (as in diffusers), not sample');
    const spaced = ddimTimesteps(
      cfg.numTrainTimesteps,
      steps,
      options.timestepSpacing ?? 'leading',
      options.stepsOffset ?? 0,
    );
    // diffusers: concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1] on the ascending timesteps.
    this.timesteps = spaced.length > 1 ? [spaced[0]!, spaced[1]!, ...spaced.slice(1)] : spaced;
    this.stride = Math.floor(cfg.numTrainTimesteps / steps);
    this.finalAlpha = (options.setAlphaToOne ?? false) ? 1 : alphas[0]!;
    this.denoised = new Float32Array(size);
    this.combined = new Float32Array(size);
  }

  step(modelOutput: Float32Array, sample: Float32Array): void {
    const counter = this.index;
    const fed = this.timesteps[counter];
    if (fed === undefined) throw new Error('PNDM: step called more times than there are timesteps');
    this.index++;
    this.preview(fed, modelOutput, sample);

    let t = fed;
    let prev = t - this.stride;
    if (counter !== 1) {
      this.ets = [...this.ets.slice(-3), Float32Array.from(modelOutput)];
    } else {
      // The repeated timestep: step again from the first step's timestep and sample.
      prev = t;
      t += this.stride;
    }
    const e = this.ets;
    const n = e.length;
    const eps = this.combined;
    let from = sample;
    for (let k = 0; k < eps.length; k++) {
      if (n === 1 && counter === 0) eps[k] = modelOutput[k]!;
      else if (n === 1 && counter === 1) eps[k] = (modelOutput[k]! + e[0]![k]!) / 2;
      else if (n === 2) eps[k] = (3 * e[1]![k]! - e[0]![k]!) / 2;
      else if (n === 3) eps[k] = (23 * e[2]![k]! - 16 * e[1]![k]! + 5 * e[0]![k]!) / 12;
      else eps[k] = (55 * e[3]![k]! - 59 * e[2]![k]! + 37 * e[1]![k]! - 9 * e[0]![k]!) / 24;
    }
    if (n === 1 && counter === 0) this.firstSample = Float32Array.from(sample);
    else if (n === 1 && counter === 1) {
      from = this.firstSample!;
      this.firstSample = null;
    }
    this.transfer(from, t, prev, eps, sample);
  }

  /** diffusers' _get_prev_sample: x at `prev` from x at `t` and a noise estimate, written into `out`. */
  private transfer(x: Float32Array, t: number, prev: number, output: Float32Array, out: Float32Array): void {
    const abar = this.alphas[t]!;
    const abarPrev = prev >= 0 ? this.alphas[prev]! : this.finalAlpha;
    const v = this.cfg.predictionType === 'v_prediction';
    const a = Math.sqrt(abar);
    const s = Math.sqrt(1 - abar);
    const sampleCoeff = Math.sqrt(abarPrev / abar);
    const denom = abar * Math.sqrt(1 - abarPrev) + Math.sqrt(abar * (1 - abar) * abarPrev);
    const outputCoeff = (abarPrev - abar) / denom;
    for (let k = 0; k < out.length; k++) {
      const xk = x[k]!;
      // A v prediction becomes the noise estimate it implies: eps = sqrt(abar) v + sqrt(1 - abar) x.
      const eps = v ? a * output[k]! + s * xk : output[k]!;
      out[k] = sampleCoeff * xk - outputCoeff * eps;
    }
  }

  /** The clean-sample estimate of this model output, for progress previews (PLMS itself does not use it). */
  private preview(t: number, modelOutput: Float32Array, sample: Float32Array): void {
    const abar = this.alphas[t]!;
    const [xa, xb] = predictionCoefficients(this.cfg.predictionType, Math.sqrt(abar), Math.sqrt(1 - abar)).x0;
    for (let k = 0; k < sample.length; k++) this.denoised[k] = xa * sample[k]! + xb * modelOutput[k]!;
  }
}
