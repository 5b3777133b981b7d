import { describe, expect, it } from 'vitest';
import { EtaEstimator } from '../src/bots/core/eta.ts';
import { renderEta, renderProgress } from '../src/bots/core/render.ts';

/** The estimator on a hand-moved clock: every number below follows from the times given. */
function clocked(options: { concurrency?: number; weight?: number } = {}) {
  let now = 1_000_000;
  const estimator = new EtaEstimator({ ...options, now: () => now });
  return {
    estimator,
    at: (ms: number) => {
      now = 1_000_000 + ms;
    },
  };
}

const imagine = (id: string) => ({ id, kind: 'imagine' as const });

describe('EtaEstimator', () => {
  it('estimates nothing before a job of the kind has been measured', () => {
    const { estimator, at } = clocked();
    expect(estimator.estimate(imagine('a'), { stage: 'queued', position: 0 })).toBeNull();
    estimator.observe('a', { stage: 'thinking' });
    at(500);
    expect(estimator.estimate(imagine('a'), { stage: 'thinking' })).toBeNull();
    // A chat run teaches nothing about imagine jobs.
    estimator.observe('c', { stage: 'thinking' });
    at(2500);
    const run = estimator.finish('c')!;
    expect(run.ms).toBe(2000);
    estimator.learn('chat', run);
    expect(estimator.estimate(imagine('b'), { stage: 'queued', position: 0 })).toBeNull();
    expect(estimator.estimate({ id: 'd', kind: 'chat' }, { stage: 'queued', position: 0 })).not.toBeNull();
  });

  it('measures a run from its first progress past the queue to completion, not from queue events', () => {
    const { estimator, at } = clocked();
    estimator.observe('a', { stage: 'queued', position: 2 });
    at(1000);
    estimator.observe('a', { stage: 'thinking' });
    at(4000);
    expect(estimator.finish('a')).toEqual({ ms: 3000 });
    // A job whose start was never seen (a restart mid-job) measures nothing.
    expect(estimator.finish('unseen')).toBeNull();
  });

  it('keeps a moving average per kind', () => {
    const { estimator } = clocked({ weight: 0.5 });
    estimator.learn('imagine', { ms: 4000 });
    estimator.learn('imagine', { ms: 8000 });
    // 4000 + 0.5 × (8000 − 4000), alone in the queue with nothing ahead but the running job of the same average.
    expect(estimator.estimate(imagine('x'), { stage: 'queued', position: 0 })?.ms).toBe(12_000);
  });

  it('a waiting job: the running job and those ahead, shared among the workers, then its own run', () => {
    const { estimator, at } = clocked();
    estimator.learn('find', { ms: 1000 });
    estimator.learn('imagine', { ms: 5000 }); // any-kind average: 1000 + 0.3 × 4000 = 2200
    at(10);
    const eta = estimator.estimate(imagine('w'), { stage: 'queued', position: 2 })!;
    expect(eta.ms).toBeCloseTo(3 * 2200 + 5000);
    expect(eta.at).toBe(1_000_010 + eta.ms);
    const shared = clocked({ concurrency: 2 });
    shared.estimator.learn('imagine', { ms: 5000 });
    expect(shared.estimator.estimate(imagine('w'), { stage: 'queued', position: 3 })?.ms).toBe(
      (4 * 5000) / 2 + 5000,
    );
  });

  it('a running job without steps: its kind’s average less the time it has run, none once overdue', () => {
    const { estimator, at } = clocked();
    estimator.learn('imagine', { ms: 5000 });
    estimator.observe('r', { stage: 'thinking' });
    at(2000);
    expect(estimator.estimate(imagine('r'), { stage: 'thinking' })?.ms).toBe(3000);
    at(6000);
    expect(estimator.estimate(imagine('r'), { stage: 'thinking' })).toBeNull();
  });

  it('a drawing job: the time per step so far times the steps left, plus the measured time after the last step', () => {
    const { estimator, at } = clocked();
    estimator.observe('d', { stage: 'thinking' });
    at(100);
    estimator.observe('d', { stage: 'generating', step: 1, steps: 10 });
    // One step gives no time per step, and the kind was never measured.
    expect(estimator.estimate(imagine('d'), { stage: 'generating', step: 1, steps: 10 })).toBeNull();
    at(700);
    estimator.observe('d', { stage: 'generating', step: 4, steps: 10 });
    // 200 ms a step, 6 steps left; the time after the last step is not known yet.
    expect(estimator.estimate(imagine('d'), { stage: 'generating', step: 4, steps: 10 })?.ms).toBe(1200);
    at(800);
    expect(estimator.estimate(imagine('d'), { stage: 'generating', step: 4, steps: 10 })?.ms).toBe(1100);
    at(1900);
    estimator.observe('d', { stage: 'generating', step: 10, steps: 10 });
    estimator.observe('d', { stage: 'encoding' });
    at(2200);
    const run = estimator.finish('d')!;
    expect(run).toEqual({ ms: 2200, tailMs: 300 });
    estimator.learn('imagine', run);

    // The next drawing adds the 300 ms measured after the last step.
    estimator.observe('e', { stage: 'generating', step: 1, steps: 5 });
    at(2600);
    estimator.observe('e', { stage: 'generating', step: 3, steps: 5 });
    expect(estimator.estimate(imagine('e'), { stage: 'generating', step: 3, steps: 5 })?.ms).toBe(
      2 * 200 + 300,
    );
  });

  it('forgets failed and cancelled runs', () => {
    const { estimator, at } = clocked();
    estimator.observe('f', { stage: 'thinking' });
    at(50_000);
    estimator.forget('f');
    expect(estimator.finish('f')).toBeNull();
  });
});

describe('rendering an ETA', () => {
  const eta = { at: 1_700_000_012_300, ms: 12_300 };

  it('as Discord’s relative timestamp, Slack’s date markup with a fallback, or plain words', () => {
    expect(renderEta(eta, 'discord')).toBe('<t:1700000013:R>');
    expect(renderEta(eta, 'slack')).toBe('<!date^1700000013^by {time_secs}|in about 12 s>');
    expect(renderEta(eta, 'plain')).toBe('in about 12 s');
    expect(renderEta({ at: 0, ms: 300_000 }, 'plain')).toBe('in about 5 min');
  });

  it('on the progress line, which stays one line', () => {
    expect(renderProgress({ stage: 'queued', position: 0 }, renderEta(eta, 'discord'))).toBe(
      '⏳ Next in line… (ready <t:1700000013:R>)',
    );
    expect(renderProgress({ stage: 'generating', step: 2, steps: 8 })).toBe('🎨 Drawing… step 2/8');
  });
});
