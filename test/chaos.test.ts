import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChaosFleet } from './support/chaos-fleet.ts';

/**
 * Faults (#14 §3, README "Scaling") on one fleet of real processes: `gill bot` on the Discord fake and two
 * `gill worker`s, over a Postgres cluster and a Redis server (AOF on) of this test's own. Each case asks
 * for images, breaks something while a job runs, and counts the replies Discord received: exactly one
 * per request. bench/chaos.ts runs the same cases and prints their timings.
 */

// Postgres's own binaries make the restartable cluster; CI has them.
const ready = existsSync('/usr/lib/postgresql/15/bin/initdb') || process.env.CI === 'true';

describe.skipIf(!ready)('chaos', () => {
  let fleet: ChaosFleet;
  const asked: string[] = [];
  const imagine = (steps: number) => {
    const token = fleet.imagine(steps);
    asked.push(token);
    return token;
  };

  beforeAll(async () => {
    fleet = await ChaosFleet.start(2);
  }, 180_000);

  afterAll(async () => fleet?.close());

  it('SIGKILL of a worker mid-job: another worker completes it, one reply', async () => {
    const token = imagine(40);
    const busy = await fleet.workerRunning();
    const survivor = fleet.workers.find((w) => w !== busy)!;
    const before = await fleet.completedRuns();
    await busy.stop('SIGKILL');
    await fleet.untilReplied([token]);
    expect(fleet.replies(token)).toBe(1);
    expect(survivor.output.join('')).toContain('"msg":"job completed"');
    expect(await fleet.completedRuns()).toBe(before + 1);
    await fleet.respawn(busy);
  });

  it('restart of the bot mid-job: the new bot delivers the reply, once', async () => {
    const token = imagine(30);
    await fleet.workerRunning();
    await fleet.bot.stop('SIGKILL');
    await fleet.respawn(fleet.bot);
    await fleet.untilReplied([token]);
    expect(fleet.replies(token)).toBe(1);
  });

  it('restart of Redis (AOF on) mid-run: no job lost, every person gets one reply', async () => {
    const tokens = [imagine(12), imagine(12), imagine(12), imagine(12)];
    await fleet.workerRunning();
    await fleet.redis.restart(500);
    await fleet.untilReplied(tokens, 90_000);
    for (const token of tokens) expect(fleet.replies(token)).toBe(1);
  });

  it('restart of Postgres: the bot and workers reconnect and carry on', async () => {
    const during = [imagine(12), imagine(12)];
    await fleet.workerRunning();
    await fleet.postgres.restart(500);
    const after = [imagine(4), imagine(4)];
    await fleet.untilReplied([...during, ...after], 90_000);
    for (const token of [...during, ...after]) expect(fleet.replies(token)).toBe(1);
    await Promise.all([fleet.bot, ...fleet.workers].map((p) => p.ready(30_000)));
  });

  it('SIGTERM: the worker finishes its job before exiting, within the grace period', async () => {
    const token = imagine(30);
    const busy = await fleet.workerRunning();
    const started = Date.now();
    const exit = await busy.stop('SIGTERM');
    const took = Date.now() - started;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(took).toBeLessThan(25_000);
    const log = busy.output.join('');
    expect(log.lastIndexOf('"msg":"job completed"')).toBeGreaterThan(log.indexOf('"msg":"shutting down'));
    await fleet.untilReplied([token]);
    expect(fleet.replies(token)).toBe(1);
  });

  it('afterwards: every job completed and delivered once, no late duplicate', async () => {
    await sleep(2000);
    for (const token of asked) expect(fleet.replies(token)).toBe(1);
    const jobs = await fleet.jobs();
    expect(jobs).toHaveLength(asked.length);
    expect(jobs.every((job) => job.status === 'completed' && job.delivered)).toBe(true);
  });
});
