import {
  dpmTimesteps,
  f32,
  type NoiseScheduleConfig,
  predictionCoefficients,
  type Sampler,
  type SamplerOptions,
} from './schedule.ts';

/**
 * diffusers' DPMSolverMultistepScheduler with its defaults (Lu et al. 2022, "DPM-Solver++: Fast Solver for
 * Guided Sampling of Diffusion Probabilistic Models"): algorithm dpmsolver++, solver order 2, midpoint.
 */

/**
 * DPM-Solver++ (2M): a second-order multistep solver of the diffusion ODE in log-SNR time on the
 * data-prediction model; first order on the first step and on the final step (diffusers' lower_order_final).
 */
export class DpmSolverPlusPlusSampler implements Sampler {
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
