import { DdimSampler } from './ddim.ts';
import { DpmSolverPlusPlusSampler } from './dpm-solver-plus-plus.ts';
import { PndmSampler } from './pndm.ts';
import { alphasCumprod, type NoiseScheduleConfig, type Sampler, type SamplerOptions } from './schedule.ts';

/** The samplers, by the names the CLI and the manifest use. */
export const SCHEDULER_NAMES = ['ddim', 'pndm', 'dpm++'] as const;
export type SchedulerName = (typeof SCHEDULER_NAMES)[number];

/** diffusers' own spellings, accepted wherever a scheduler is named (`gill-bundle/2` writes "dpmsolver++"). */
const ALIASES: Record<string, SchedulerName> = { 'dpmsolver++': 'dpm++' };

/** The sampler a name means, or undefined when it names none. */
export function parseSchedulerName(name: string): SchedulerName | undefined {
  return (SCHEDULER_NAMES as readonly string[]).includes(name) ? (name as SchedulerName) : ALIASES[name];
}

/** Every accepted name, for messages and schemas. */
export const ACCEPTED_SCHEDULER_NAMES = [...SCHEDULER_NAMES, ...Object.keys(ALIASES)];

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
    case 'pndm':
      return new PndmSampler(cfg, alphas, steps, size, options);
    case 'dpm++':
      return new DpmSolverPlusPlusSampler(cfg, alphas, steps, size, options);
    default:
      throw new Error(
        `unknown scheduler "${name as string}" (expected ${ACCEPTED_SCHEDULER_NAMES.join(', ')})`,
      );
  }
}
