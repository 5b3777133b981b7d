import { execFile } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import pg from 'pg';
import { FakeDiscord } from '../fakes/discord.ts';
import { type GillProcess, sample, spawnGill } from './gill-process.ts';
import { OwnPostgres, OwnRedis } from './own-services.ts';

/**
 * The fault cases of #14 §3 (test/chaos.test.ts, bench/chaos.ts) on the real roles: Postgres and Redis of
 * their own (so they can be restarted), `gill bot` against the loopback Discord fake, `gill worker`s with
 * the real tiny bundle. Replies are counted where Discord would show them: each /imagine interaction's
 * final edit with the image.
 */

const run = promisify(execFile);
const BOT_TOKEN = 'MTA5ODc2NTQzMjEwOTg3NjU0Mw.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB';
/** A short job lock, so a killed worker's job moves to another within seconds (GILL_JOB_LOCK_MS). */
const LOCK_MS = 3000;

export class ChaosFleet {
  bot!: GillProcess;
  workers: GillProcess[] = [];
  private users = 0;

  private constructor(
    readonly postgres: OwnPostgres,
    readonly redis: OwnRedis,
    readonly fake: FakeDiscord,
  ) {}

  static async start(workers: number): Promise<ChaosFleet> {
    const [postgres, redis, fake] = await Promise.all([
      OwnPostgres.start(),
      OwnRedis.start(['--maxmemory-policy', 'noeviction']),
      new FakeDiscord().start(),
    ]);
    const fleet = new ChaosFleet(postgres, redis, fake);
    await run(process.execPath, ['bin/gill.mjs', 'migrate'], { env: { ...process.env, ...fleet.env } });
    fleet.bot = await spawnGill('bot', fleet.env);
    for (let i = 0; i < workers; i++) fleet.workers.push(await spawnGill('worker', fleet.env));
    await Promise.all([fleet.bot, ...fleet.workers].map((p) => p.ready(90_000)));
    return fleet;
  }

  get env(): Record<string, string> {
    return {
      DATABASE_URL: this.postgres.url,
      REDIS_URL: this.redis.url,
      DISCORD_TOKEN: BOT_TOKEN,
      DISCORD_APPLICATION_ID: this.fake.applicationId,
      DISCORD_API_URL: this.fake.apiUrl,
      DISCORD_CDN_URL: this.fake.cdnUrl,
      GILL_SKIP_CHECKSUMS: '1',
      GILL_JOB_LOCK_MS: String(LOCK_MS),
    };
  }

  /** A new person asks for an image; the interaction token identifies the reply. */
  imagine(steps: number): string {
    const user = this.fake.addUser(`user${++this.users}`);
    return this.fake.interact({
      user,
      command: {
        name: 'imagine',
        options: [
          { name: 'prompt', type: 3, value: `a red square, request ${this.users}` },
          { name: 'steps', type: 4, value: steps },
        ],
      },
    }).token;
  }

  /** The image replies on the interaction (final edits carrying a file). */
  replies(token: string): number {
    return this.fake
      .callsTo('PATCH', new RegExp(`/webhooks/${this.fake.applicationId}/${token}/messages/@original$`))
      .filter((call) => call.files.length > 0 && call.status === 200).length;
  }

  async untilReplied(tokens: string[], timeoutMs = 60_000): Promise<void> {
    for (const token of tokens) {
      await this.fake.waitFor(() => this.replies(token) > 0, timeoutMs, `the reply to ${token}`);
    }
  }

  /** The first worker to log that it started a job from now on. */
  async workerRunning(timeoutMs = 30_000): Promise<GillProcess> {
    const deadline = Date.now() + timeoutMs;
    const seen = new Map(this.workers.map((w) => [w, w.output.join('').length]));
    while (Date.now() < deadline) {
      const busy = this.workers.find((w) =>
        w.output.join('').slice(seen.get(w)).includes('"msg":"job started"'),
      );
      if (busy) return busy;
      await sleep(50);
    }
    throw new Error('no worker started a job');
  }

  /** Replaces a stopped worker (or the bot) with a fresh process. */
  async respawn(old: GillProcess): Promise<GillProcess> {
    const role = old === this.bot ? 'bot' : 'worker';
    const fresh = await spawnGill(role, this.env);
    if (role === 'bot') this.bot = fresh;
    else this.workers[this.workers.indexOf(old)] = fresh;
    await fresh.ready(90_000);
    return fresh;
  }

  /** Jobs completed according to the workers' own counters (live processes only). */
  async completedRuns(): Promise<number> {
    const texts = await Promise.all(this.workers.map((w) => w.scrape().catch(() => '')));
    return texts.reduce(
      (sum, text) =>
        sum + (sample(text, 'gill_job_run_seconds_count', { kind: 'imagine', outcome: 'completed' }) ?? 0),
      0,
    );
  }

  /** The jobs table: how each job ended and whether its reply is recorded as delivered. */
  async jobs(): Promise<{ status: string; delivered: boolean }[]> {
    const db = new pg.Client({ connectionString: this.postgres.url });
    await db.connect();
    try {
      const { rows } = await db.query<{ status: string; delivered: boolean }>(
        'SELECT status, delivered_at IS NOT NULL AS delivered FROM jobs ORDER BY created_at',
      );
      return rows;
    } finally {
      await db.end();
    }
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.bot, ...this.workers].map((p) => p?.stop('SIGKILL')));
    await Promise.allSettled([this.fake.close(), this.redis.close(), this.postgres.close()]);
  }
}
