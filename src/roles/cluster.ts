import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { ConfigError, loadConfig } from '../config.ts';
import { createLogger } from '../log.ts';
import { discordConfigured, slackConfigured } from './adapters.ts';
import { DEFAULT_METRICS_PORTS } from './observe.ts';
import { watchShutdown } from './shutdown.ts';

/**
 * `npm run cluster`: the topology of compose.yaml as local processes, for machines without containers:
 * `gill migrate` once, one `gill bot` (when a platform is configured) and N `gill worker`s, against the
 * DATABASE_URL and REDIS_URL of the environment. Each process serves its metrics on a port of its own
 * (the bot on the base port, worker i on base + i). SIGINT/SIGTERM stops them all.
 */

const GILL = fileURLToPath(new URL('../../bin/gill.mjs', import.meta.url));
/** How long the processes get to finish their jobs after SIGTERM (the worker's own grace is 20 s). */
const STOP_GRACE_MS = 30_000;

export interface ClusterMember {
  name: string;
  pid: number;
  metricsUrl: string;
}

export interface Cluster {
  members: ClusterMember[];
  /** SIGTERM to every process; SIGKILL to any still running after the grace period. */
  stop(): Promise<void>;
}

export interface ClusterOptions {
  workers: number;
  env?: NodeJS.ProcessEnv;
  /** The bot's metrics port; worker i gets base + i. */
  metricsPort?: number;
}

export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  const env = options.env ?? process.env;
  const config = loadConfig(env);
  const problems: string[] = [];
  if (!config.DATABASE_URL)
    problems.push('DATABASE_URL: required by `npm run cluster` (the shared Postgres)');
  if (!config.REDIS_URL) problems.push('REDIS_URL: required by `npm run cluster` (the shared queue)');
  if (!Number.isInteger(options.workers) || options.workers < 1)
    problems.push('--workers: must be at least 1');
  if (problems.length) throw new ConfigError(problems);

  const migrate = spawn(process.execPath, [GILL, 'migrate'], {
    env,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const [code] = (await once(migrate, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`gill migrate exited with code ${code}`);

  const base = options.metricsPort ?? DEFAULT_METRICS_PORTS.bot!;
  const children: ChildProcess[] = [];
  const members: ClusterMember[] = [];
  const launch = (name: string, role: 'bot' | 'worker', port: number) => {
    const child = spawn(process.execPath, [GILL, role], {
      env: { ...env, GILL_METRICS_PORT: String(port) },
      stdio: ['ignore', 'inherit', 'inherit'],
      // A group of its own: Ctrl-C reaches the cluster only, which stops each process once, gracefully.
      detached: true,
    });
    child.on('exit', (exitCode, signal) => {
      if (!stopping) process.stderr.write(`cluster: ${name} exited (${signal ?? `code ${exitCode}`})\n`);
    });
    children.push(child);
    members.push({ name, pid: child.pid!, metricsUrl: `http://127.0.0.1:${port}/metrics` });
  };
  let stopping = false;
  if (discordConfigured(config) || slackConfigured(config)) launch('bot', 'bot', base);
  else process.stderr.write('cluster: no platform configured (DISCORD_TOKEN or SLACK_BOT_TOKEN): no bot\n');
  for (let i = 1; i <= options.workers; i++) launch(`worker ${i}`, 'worker', base + i);

  return {
    members,
    async stop() {
      stopping = true;
      const running = children.filter((child) => child.exitCode === null && child.signalCode === null);
      const exits = running.map((child) => once(child, 'exit'));
      for (const child of running) child.kill('SIGTERM');
      const timer = setTimeout(() => {
        for (const child of running)
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }, STOP_GRACE_MS);
      await Promise.all(exits);
      clearTimeout(timer);
    },
  };
}

/** The entry of `npm run cluster -- [--workers N] [--metrics-port P]`. */
export async function runCluster(argv: string[]): Promise<void> {
  const value = (flag: string) => {
    const at = argv.indexOf(flag);
    return at >= 0 ? Number(argv[at + 1]) : undefined;
  };
  // Heard from now, so a signal while the migrations run still stops the cluster once it has started.
  const shutdown = watchShutdown(createLogger().child({ role: 'cluster' }), STOP_GRACE_MS + 5_000);
  const cluster = await startCluster({
    workers: value('--workers') ?? 2,
    metricsPort: value('--metrics-port'),
  });
  for (const member of cluster.members) {
    process.stdout.write(`cluster: ${member.name} (pid ${member.pid}) metrics at ${member.metricsUrl}\n`);
  }
  const signal = await shutdown.requested;
  process.stdout.write(`cluster: ${signal}: stopping every process\n`);
  await cluster.stop();
  process.stdout.write('cluster: stopped\n');
}
