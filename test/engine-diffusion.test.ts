import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { fillGaussian } from '../src/engine/diffusion/noise.ts';
import { createSampler, type SchedulerName } from '../src/engine/diffusion/schedulers/index.ts';
import {
  alphasCumprod,
  betaSchedule,
  ddimTimesteps,
  dpmTimesteps,
  type NoiseScheduleConfig,
  type PredictionType,
  type SamplerOptions,
} from '../src/engine/diffusion/schedulers/schedule.ts';

const SD: NoiseScheduleConfig = {
  numTrainTimesteps: 1000,
  betaSchedule: 'scaled_linear',
  betaStart: 0.00085,
  betaEnd: 0.012,
  predictionType: 'epsilon',
};
const COSINE: NoiseScheduleConfig = { ...SD, betaSchedule: 'squaredcos_cap_v2' };
const LINEAR: NoiseScheduleConfig = { ...SD, betaSchedule: 'linear', betaStart: 0.0001, betaEnd: 0.02 };

describe('noise schedules', () => {
  it("matches diffusers' alphas_cumprod for Stable Diffusion's scaled_linear config", () => {
    const ac = alphasCumprod(SD);
    expect(ac.length).toBe(1000);
    // Values of torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2) in float32.
    expect(ac[0]).toBeCloseTo(0.9991499781608582, 9);
    expect(ac[1]).toBeCloseTo(0.9982960224151611, 9);
    expect(ac[499]).toBeCloseTo(0.2776694595813751, 6);
    expect(ac[999]).toBeCloseTo(0.0046600960195064545, 7);
    // SD 1.5's terminal signal level sqrt(abar_T) = 0.068265 (Lin et al. 2023, "Common diffusion noise schedules ... are flawed").
    expect(Math.sqrt(ac[999]!)).toBeCloseTo(0.068265, 5);
  });

  it('matches the linear (DDPM) and cosine schedules', () => {
    const lin = alphasCumprod(LINEAR);
    expect(lin[0]).toBeCloseTo(0.9998999834060669, 9);
    expect(lin[999]).toBeCloseTo(4.0358307160204276e-5, 9);
    const cos = alphasCumprod(COSINE);
    expect(cos[0]).toBeCloseTo(0.9999586939811707, 9);
    expect(cos[500]).toBeCloseTo(0.4922850430011749, 6);
    expect(cos[998]).toBeCloseTo(2.428766265438753e-6, 10);
    // The cap at beta = 0.999 sets the last step.
    expect(betaSchedule(COSINE)[999]).toBeCloseTo(0.999, 6);
    expect(cos[999]! / cos[998]!).toBeCloseTo(0.001, 6);
  });
});

describe('inference timesteps (diffusers spacing)', () => {
  it('DDIM leading / trailing / linspace', () => {
    expect(ddimTimesteps(1000, 25, 'leading').slice(0, 5)).toEqual([960, 920, 880, 840, 800]);
    expect(ddimTimesteps(1000, 25, 'leading').at(-1)).toBe(0);
    expect(ddimTimesteps(1000, 25, 'leading', 1).at(0)).toBe(961);
    expect(ddimTimesteps(1000, 7, 'leading').slice(0, 5)).toEqual([852, 710, 568, 426, 284]);
    expect(ddimTimesteps(1000, 7, 'trailing')).toEqual([999, 856, 713, 570, 428, 285, 142]);
    expect(ddimTimesteps(1000, 3, 'trailing')).toEqual([999, 666, 332]);
    expect(ddimTimesteps(1000, 7, 'linspace')).toEqual([999, 832, 666, 500, 333, 166, 0]);
    const trailing25 = ddimTimesteps(1000, 25, 'trailing');
    expect(trailing25).toHaveLength(25);
    expect(trailing25.slice(0, 3)).toEqual([999, 959, 919]);
    expect(trailing25.at(-1)).toBe(39);
  });

  it('DPM-Solver++ linspace / leading', () => {
    const lin25 = dpmTimesteps(1000, 25, 'linspace');
    expect(lin25.slice(11, 15)).toEqual([559, 519, 480, 440]); // numpy rounds 499.5 → 500 and 479.52 → 480
    expect(lin25.at(-1)).toBe(40);
    expect(dpmTimesteps(1000, 7, 'linspace')).toEqual([999, 856, 714, 571, 428, 285, 143]);
    expect(dpmTimesteps(1000, 7, 'leading')).toEqual([875, 750, 625, 500, 375, 250, 125]);
    expect(dpmTimesteps(1000, 3, 'linspace')).toEqual([999, 666, 333]);
  });

  it('rejects step counts the schedule cannot hold', () => {
    expect(() => ddimTimesteps(1000, 0, 'leading')).toThrow(/steps must be an integer from 1 to 1000/);
    expect(() => createSampler('dpm++', SD, 1001, 4)).toThrow(/steps must be/);
    expect(() => createSampler('ddim', SD, 2.5, 4)).toThrow(/steps must be/);
  });
});

interface SchedulerFixture {
  start: number[];
  base: number[];
  cases: {
    scheduler: SchedulerName;
    config: NoiseScheduleConfig;
    options: SamplerOptions;
    steps: number;
    timesteps: number[];
    samples: number[][];
  }[];
}

/**
 * Trajectories from diffusers' formulas re-implemented in torch float32 (test/support/scheduler_reference.py,
 * which writes test/fixtures/schedulers.json), under a toy model: output = (0.05 + t / 2000) · sample + base.
 * Every sample must agree within 1e-5 relative to max(1, |value|) (measured: at most 1.3e-6, from the reference
 * computing its coefficients in float32 where the engine uses float64).
 */
describe("samplers reproduce diffusers' trajectories", () => {
  const fixture = JSON.parse(
    readFileSync(new URL('./fixtures/schedulers.json', import.meta.url), 'utf8'),
  ) as SchedulerFixture;
  const base = Float32Array.from(fixture.base);
  for (const c of fixture.cases) {
    it(`${c.scheduler}, ${c.steps} steps, ${c.config.predictionType} ${JSON.stringify(c.options)}`, () => {
      const sampler = createSampler(c.scheduler, c.config, c.steps, base.length, c.options);
      expect(sampler.timesteps).toEqual(c.timesteps);
      const sample = Float32Array.from(fixture.start);
      const output = new Float32Array(base.length);
      let worst = 0;
      sampler.timesteps.forEach((t, i) => {
        const scale = Math.fround(Math.fround(0.05) + Math.fround(t / 2000));
        for (let k = 0; k < base.length; k++) output[k] = scale * sample[k]! + base[k]!;
        sampler.step(output, sample);
        c.samples[i]!.forEach((want, k) => {
          worst = Math.max(worst, Math.abs(sample[k]! - want) / Math.max(1, Math.abs(want)));
        });
      });
      expect(worst).toBeLessThan(1e-5);
    });
  }
});

/** A model that knows the clean sample: it answers what a perfect network trained on x0 would. */
function oracle(x0: Float32Array, abar: number, type: PredictionType, sample: Float32Array): Float32Array {
  const a = Math.sqrt(abar);
  const s = Math.sqrt(1 - abar);
  return sample.map((x, i) => {
    const eps = (x - a * x0[i]!) / s;
    if (type === 'epsilon') return eps;
    if (type === 'v_prediction') return a * eps - s * x0[i]!;
    return x0[i]!;
  });
}

function run(
  name: SchedulerName,
  cfg: NoiseScheduleConfig,
  steps: number,
  x0: Float32Array,
  opts: SamplerOptions = {},
) {
  const ac = alphasCumprod(cfg);
  const sampler = createSampler(name, cfg, steps, x0.length, opts);
  const sample = fillGaussian(new Float32Array(x0.length), 7);
  for (const t of sampler.timesteps) sampler.step(oracle(x0, ac[t]!, cfg.predictionType, sample), sample);
  return { sample, sampler };
}

describe('samplers with a perfect noise oracle recover x0', () => {
  const x0 = Float32Array.from({ length: 64 }, (_, i) => Math.sin(i) * 1.5);
  const cases: [SchedulerName, NoiseScheduleConfig, SamplerOptions][] = [
    ['ddim', SD, {}],
    ['ddim', SD, { timestepSpacing: 'trailing' }],
    ['ddim', COSINE, { timestepSpacing: 'linspace' }],
    ['ddim', { ...SD, predictionType: 'v_prediction' }, {}],
    ['ddim', { ...LINEAR, predictionType: 'sample' }, {}],
    // PNDM with a final alpha of 1 (its default, alphas_cumprod[0], stops just short of x0); not with
    // v_prediction, whose multistep averages v outputs of different timesteps and so is not exact even for
    // an oracle (as in diffusers; the fixtures check it).
    ['pndm', SD, { setAlphaToOne: true }],
    ['pndm', COSINE, { setAlphaToOne: true, stepsOffset: 1 }],
    ['dpm++', SD, {}],
    ['dpm++', COSINE, {}],
    ['dpm++', SD, { timestepSpacing: 'trailing' }],
    ['dpm++', { ...SD, predictionType: 'v_prediction' }, { timestepSpacing: 'leading' }],
  ];
  for (const [name, cfg, opts] of cases) {
    it(`${name} ${cfg.betaSchedule} ${cfg.predictionType} ${JSON.stringify(opts)}`, () => {
      // (One step from t = 999 of the cosine schedule, where 1/alpha = 20000, is beyond float32 precision.)
      for (const steps of [2, 4, 25]) {
        const { sample, sampler } = run(name, cfg, steps, x0, opts);
        for (let i = 0; i < x0.length; i++) expect(sample[i]).toBeCloseTo(x0[i]!, 3);
        // The preview estimate is x0 too.
        for (let i = 0; i < x0.length; i++) expect(sampler.denoised[i]).toBeCloseTo(x0[i]!, 3);
      }
    });
  }

  it('DDIM without set_alpha_to_one stops at the noise level of t = 0', () => {
    const ac = alphasCumprod(SD);
    const sampler = createSampler('ddim', SD, 10, x0.length, { setAlphaToOne: false });
    const start = fillGaussian(new Float32Array(x0.length), 3);
    const sample = Float32Array.from(start);
    for (const t of sampler.timesteps) sampler.step(oracle(x0, ac[t]!, 'epsilon', sample), sample);
    // x = sqrt(abar0) x0 + sqrt(1 - abar0) eps, where eps stays the noise implied by the start.
    const tStart = sampler.timesteps[0]!;
    for (let i = 0; i < x0.length; i++) {
      const eps = (start[i]! - Math.sqrt(ac[tStart]!) * x0[i]!) / Math.sqrt(1 - ac[tStart]!);
      expect(sample[i]).toBeCloseTo(Math.sqrt(ac[0]!) * x0[i]! + Math.sqrt(1 - ac[0]!) * eps, 4);
    }
  });

  it('DDIM with clip_sample lands on the clipped clean sample', () => {
    const { sample } = run('ddim', SD, 10, x0, { clipSample: true });
    for (let i = 0; i < x0.length; i++) expect(sample[i]).toBeCloseTo(Math.max(-1, Math.min(1, x0[i]!)), 3);
    expect(x0.some((v) => Math.abs(v) > 1.2)).toBe(true);
  });

  it('refuses a step beyond the schedule', () => {
    const { sampler, sample } = run('ddim', SD, 3, x0);
    expect(() => sampler.step(sample, sample)).toThrow(/more times than there are timesteps/);
    const dpm = run('dpm++', SD, 3, x0);
    expect(() => dpm.sampler.step(sample, sample)).toThrow(/more times than there are timesteps/);
  });
});

/**
 * With Gaussian data x0 ~ N(0, s²) the ideal denoiser is linear and the probability-flow ODE has a closed
 * form: in y = x / alpha and sigma = sqrt((1 - abar) / abar), y(0) = y(sigma_T) · s / sqrt(s² + sigma_T²).
 * A sampler's error against it measures its order of accuracy.
 */
describe('ODE accuracy on Gaussian data', () => {
  const s = 4;
  const ac = alphasCumprod(SD);
  const sigmaOf = (t: number) => Math.sqrt((1 - ac[t]!) / ac[t]!);
  function relativeError(name: SchedulerName, steps: number): number {
    // Both on the same "trailing" grid, so the comparison is of the solvers alone.
    const sampler = createSampler(name, SD, steps, 1, { timestepSpacing: 'trailing' });
    const tStart = sampler.timesteps[0]!;
    const x = Float32Array.of(1);
    const exact = (1 / Math.sqrt(ac[tStart]!)) * (s / Math.sqrt(s * s + sigmaOf(tStart) ** 2));
    const eps = new Float32Array(1);
    for (const t of sampler.timesteps) {
      const sigma = sigmaOf(t);
      eps[0] = ((x[0]! / Math.sqrt(ac[t]!)) * sigma) / (s * s + sigma * sigma);
      sampler.step(eps, x);
    }
    return Math.abs(x[0]! - exact) / exact;
  }

  it('DDIM converges at first order, DPM-Solver++ 2M at second order and far closer', () => {
    const ddim = [10, 20, 40].map((n) => relativeError('ddim', n));
    const dpm = [10, 20, 40].map((n) => relativeError('dpm++', n));
    // Halving the step halves a first-order error and quarters a second-order one (the first-order
    // first and last steps of DPM-Solver++ pull its ratio a little below 4).
    for (const i of [0, 1]) {
      expect(ddim[i]! / ddim[i + 1]!).toBeGreaterThan(1.7);
      expect(ddim[i]! / ddim[i + 1]!).toBeLessThan(2.3);
      expect(dpm[i]! / dpm[i + 1]!).toBeGreaterThan(2.8);
    }
    for (let i = 0; i < 3; i++) expect(dpm[i]!).toBeLessThan(ddim[i]! / 5);
    expect(dpm[2]!).toBeLessThan(2e-3);
  });
});

describe('seeded noise', () => {
  it('is standard normal and reproducible', () => {
    const a = fillGaussian(new Float32Array(100_001), 42);
    const b = fillGaussian(new Float32Array(100_001), 42);
    const c = fillGaussian(new Float32Array(100_001), 43);
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
    let mean = 0;
    for (const v of a) mean += v;
    mean /= a.length;
    let variance = 0;
    let beyond2 = 0;
    for (const v of a) {
      variance += (v - mean) ** 2;
      if (Math.abs(v) > 2) beyond2++;
    }
    variance /= a.length;
    expect(Math.abs(mean)).toBeLessThan(0.01);
    expect(Math.abs(variance - 1)).toBeLessThan(0.02);
    // P(|z| > 2) = 0.0455 for a normal distribution.
    expect(beyond2 / a.length).toBeCloseTo(0.0455, 2);
    // Seed 0 is a valid seed, not a degenerate all-zero generator state.
    expect(fillGaussian(new Float32Array(4), 0).some((v) => v !== 0)).toBe(true);
  });
});
