import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeDiscord } from './fakes/discord.ts';
import { sample } from './support/gill-process.ts';
import { freePort, OwnRedis } from './support/own-services.ts';
import { createTempDatabase, probePostgres, serviceAvailable } from './support/services.ts';

/**
 * `npm run cluster` (README, "Scaling"): migrate once, one `gill bot` against the loopback Discord fake
 * and two `gill worker`s with the real tiny bundle, each serving /metrics and /readyz on its own port;
 * Discord /imagine requests are answered once each, both workers take jobs, and SIGTERM stops every
 * process.
 */

const pgUp = await serviceAvailable('Postgres (cluster)', () => probePostgres());
const BOT_TOKEN = 'MTA5ODc2NTQzMjEwOTg3NjU0Mw.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB';

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function untilReady(url: string, timeoutMs = 90_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    const response = await fetch(url).catch((error: unknown) => String(error));
    if (typeof response !== 'string' && response.status === 200) return;
    last = typeof response === 'string' ? response : await response.text();
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`${url} not ready after ${timeoutMs} ms: ${last}`);
}

describe.skipIf(!pgUp)('npm run cluster', () => {
  let database: { url: string; drop(): Promise<void> };
  let redis: OwnRedis;
  let fake: FakeDiscord;
  let cluster: ChildProcess;
  const output: string[] = [];

  beforeAll(async () => {
    database = await createTempDatabase('cluster');
    redis = await OwnRedis.start(['--maxmemory-policy', 'noeviction']);
    fake = await new FakeDiscord().start();
  });

  afterAll(async () => {
    if (cluster && cluster.exitCode === null) cluster.kill('SIGKILL');
    await fake?.close();
    await redis?.close();
    await database?.drop();
  });

  it('starts a bot and two workers, answers every request once, and stops them all on SIGTERM', async () => {
    const base = await freePort();
    cluster = spawn(
      process.execPath,
      ['--import', 'tsx', 'scripts/cluster.ts', '--workers', '2', '--metrics-port', String(base)],
      {
        env: {
          ...process.env,
          DATABASE_URL: database.url,
          REDIS_URL: redis.url,
          DISCORD_TOKEN: BOT_TOKEN,
          DISCORD_APPLICATION_ID: fake.applicationId,
          DISCORD_API_URL: fake.apiUrl,
          DISCORD_CDN_URL: fake.cdnUrl,
          GILL_SKIP_CHECKSUMS: '1',
          GILL_LOG_LEVEL: 'warn',
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    cluster.stdout!.on('data', (chunk) => output.push(String(chunk)));
    cluster.stderr!.on('data', (chunk) => output.push(String(chunk)));

    // The cluster prints each process and where its metrics are.
    const members = await fake.waitFor(
      () => {
        const found = [
          ...output.join('').matchAll(/cluster: (bot|worker \d) \(pid (\d+)\) metrics at (\S+)/g),
        ];
        return found.length === 3
          ? found.map(([, name, pid, url]) => ({ name, pid: Number(pid), url }))
          : null;
      },
      60_000,
      'the cluster to list its processes',
    );
    expect(members.map((m) => m.name)).toEqual(['bot', 'worker 1', 'worker 2']);
    expect(new Set(members.map((m) => m.url)).size).toBe(3);
    for (const member of members) await untilReady(member.url!.replace(/\/metrics$/, '/readyz'));

    const tokens = ['ann', 'bea', 'cat', 'dan'].map((name) => {
      const user = fake.addUser(name);
      return fake.interact({
        user,
        command: {
          name: 'imagine',
          options: [
            { name: 'prompt', type: 3, value: `a red square for ${name}` },
            { name: 'steps', type: 4, value: 8 },
          ],
        },
      }).token;
    });
    for (const token of tokens) {
      await fake.waitFor(
        () => (fake.original(token)?.attachments as unknown[] | undefined)?.length,
        90_000,
        `the image for ${token}`,
      );
    }

    const runs = await Promise.all(
      members
        .filter((m) => m.name !== 'bot')
        .map(async (m) => {
          const text = await (await fetch(m.url!)).text();
          return sample(text, 'gill_job_run_seconds_count', { kind: 'imagine', outcome: 'completed' }) ?? 0;
        }),
    );
    expect(runs.reduce((a, b) => a + b, 0)).toBe(4);
    expect(runs.every((n) => n >= 1)).toBe(true);
    const botText = await (await fetch(members[0]!.url!)).text();
    expect(sample(botText, 'gill_deliveries_total', { platform: 'discord', outcome: 'delivered' })).toBe(4);

    const db = new pg.Client({ connectionString: database.url });
    await db.connect();
    try {
      const { rows } = await db.query<{ status: string; delivered: boolean }>(
        'SELECT status, delivered_at IS NOT NULL AS delivered FROM jobs',
      );
      expect(rows).toHaveLength(4);
      expect(rows.every((row) => row.status === 'completed' && row.delivered)).toBe(true);
    } finally {
      await db.end();
    }
    for (const token of tokens) {
      const finals = fake
        .callsTo('PATCH', new RegExp(`/webhooks/${fake.applicationId}/${token}/messages/@original$`))
        .filter((call) => call.files.length > 0 && call.status === 200);
      expect(finals).toHaveLength(1);
    }

    const exited = once(cluster, 'exit');
    cluster.kill('SIGTERM');
    const [code] = await exited;
    expect(code).toBe(0);
    expect(output.join('')).toContain('cluster: stopped');
    for (const member of members) expect(alive(member.pid)).toBe(false);
  });
});
