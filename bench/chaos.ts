import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { ChaosFleet } from '../test/support/chaos-fleet.ts';

/**
 * `npm run chaos [-- --workers 2 --rounds 1]`: the fault cases of test/chaos.test.ts on real processes
 * (`gill bot` on the loopback Discord fake, `gill worker`s with the tiny bundle, Postgres and Redis of its
 * own), timed: how long each request took to be answered through the fault, and whether every request
 * got exactly one reply. Ends with one JSON line; exits 1 when a case fails.
 */

const { values } = parseArgs({
  options: { workers: { type: 'string', default: '2' }, rounds: { type: 'string', default: '1' } },
});
const workers = Number(values.workers);
const rounds = Number(values.rounds);

type Case = { name: string; run(fleet: ChaosFleet): Promise<string[]> };

const cases: Case[] = [
  {
    name: 'SIGKILL a worker mid-job',
    async run(fleet) {
      const token = fleet.imagine(40);
      const busy = await fleet.workerRunning();
      await busy.stop('SIGKILL');
      await fleet.untilReplied([token], 120_000);
      await fleet.respawn(busy);
      return [token];
    },
  },
  {
    name: 'restart the bot mid-job',
    async run(fleet) {
      const token = fleet.imagine(30);
      await fleet.workerRunning();
      await fleet.bot.stop('SIGKILL');
      await fleet.respawn(fleet.bot);
      await fleet.untilReplied([token], 120_000);
      return [token];
    },
  },
  {
    name: 'restart Redis (AOF) mid-run',
    async run(fleet) {
      const tokens = Array.from({ length: 6 }, () => fleet.imagine(12));
      await fleet.workerRunning();
      await fleet.redis.restart(500);
      await fleet.untilReplied(tokens, 120_000);
      return tokens;
    },
  },
  {
    name: 'restart Postgres mid-run',
    async run(fleet) {
      const tokens = [fleet.imagine(12), fleet.imagine(12)];
      await fleet.workerRunning();
      await fleet.postgres.restart(500);
      tokens.push(fleet.imagine(4), fleet.imagine(4));
      await fleet.untilReplied(tokens, 120_000);
      return tokens;
    },
  },
  {
    name: 'SIGTERM a worker mid-job',
    async run(fleet) {
      const token = fleet.imagine(30);
      const busy = await fleet.workerRunning();
      const exit = await busy.stop('SIGTERM');
      if (exit.code !== 0) throw new Error(`the worker exited with ${JSON.stringify(exit)}`);
      await fleet.untilReplied([token], 120_000);
      await fleet.respawn(busy);
      return [token];
    },
  },
];

const fleet = await ChaosFleet.start(workers);
const results: { case: string; round: number; ok: boolean; seconds: number; requests: number; detail?: string }[] =
  [];
try {
  console.log(`Chaos on ${workers} workers, ${rounds} round(s); replies counted on the Discord fake.\n`);
  for (let round = 1; round <= rounds; round++) {
    for (const c of cases) {
      const started = performance.now();
      let tokens: string[] = [];
      let detail: string | undefined;
      try {
        tokens = await c.run(fleet);
        await sleep(1000); // a late duplicate would show up here
        const counts = tokens.map((t) => fleet.replies(t));
        if (counts.some((n) => n !== 1)) detail = `replies per request: ${counts.join(', ')}`;
      } catch (error) {
        detail = error instanceof Error ? error.message : String(error);
      }
      const seconds = (performance.now() - started) / 1000;
      results.push({ case: c.name, round, ok: !detail, seconds, requests: tokens.length, detail });
      console.log(
        `${detail ? 'FAIL' : 'ok  '} ${c.name.padEnd(28)} ${seconds.toFixed(1).padStart(6)} s  ${tokens.length} request(s)${detail ? `  ${detail}` : ''}`,
      );
    }
  }
  const jobs = await fleet.jobs();
  const unfinished = jobs.filter((j) => j.status !== 'completed' || !j.delivered).length;
  console.log(`\njobs: ${jobs.length}, not completed and delivered: ${unfinished}`);
  console.log(JSON.stringify({ bench: 'chaos', workers, results, jobs: jobs.length, unfinished }));
  if (unfinished || results.some((r) => !r.ok)) process.exitCode = 1;
} finally {
  await fleet.close();
}
