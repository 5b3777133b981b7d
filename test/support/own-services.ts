import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

/**
 * A Redis server and a Postgres cluster of the test's own, in a temp dir on a free port, for the cases
 * that restart them (the shared services on 6379 and 5432 are never restarted).
 */

const run = promisify(execFile);
const PG_BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';
/** Postgres refuses to run as root: as root, its tools run as the postgres user. */
const AS_ROOT = process.getuid?.() === 0;
const pgTool = (tool: string, args: string[]) =>
  AS_ROOT
    ? run('runuser', ['-u', 'postgres', '--', `${PG_BIN}/${tool}`, ...args])
    : run(`${PG_BIN}/${tool}`, args);

export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function untilAccepting(port: number, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on port ${port} after ${timeoutMs} ms`);
    await sleep(100);
  }
}

export class OwnRedis {
  private child: ChildProcess | undefined;
  private constructor(
    readonly port: number,
    readonly dir: string,
    private readonly args: string[],
  ) {}

  /** redis-server with AOF (appendonly yes, fsync every write) in a temp dir; extra args are appended. */
  static async start(extra: string[] = []): Promise<OwnRedis> {
    const dir = await mkdtemp(path.join(tmpdir(), 'gill-redis-'));
    const port = await freePort();
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', ''];
    args.push('--appendonly', 'yes', '--appendfsync', 'always', ...extra);
    const redis = new OwnRedis(port, dir, args);
    await redis.startProcess();
    return redis;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  private async startProcess(): Promise<void> {
    this.child = spawn('redis-server', this.args, { stdio: 'ignore' });
    await untilAccepting(this.port);
  }

  /** SIGTERM (Redis writes its AOF and exits), then the same server starts again on the same port. */
  async restart(downMs = 500): Promise<void> {
    await this.stopProcess();
    await sleep(downMs);
    await this.startProcess();
  }

  private async stopProcess(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  }

  async close(): Promise<void> {
    await this.stopProcess();
    await rm(this.dir, { recursive: true, force: true });
  }
}

export class OwnPostgres {
  private constructor(
    readonly port: number,
    readonly dir: string,
  ) {}

  /** initdb (trust auth) and pg_ctl start on a free port, with a socket dir of its own. */
  static async start(): Promise<OwnPostgres> {
    const dir = await mkdtemp(path.join(tmpdir(), 'gill-pg-'));
    const port = await freePort();
    if (AS_ROOT) await run('chown', ['postgres', dir]);
    await pgTool('initdb', ['-D', path.join(dir, 'data'), '-U', 'postgres', '--auth=trust', '-E', 'UTF8']);
    const pg = new OwnPostgres(port, dir);
    await pg.pgCtl('start');
    return pg;
  }

  get url(): string {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
  }

  private async pgCtl(action: 'start' | 'stop'): Promise<void> {
    const data = path.join(this.dir, 'data');
    if (action === 'start') {
      const options = `-p ${this.port} -k ${this.dir} -c listen_addresses=127.0.0.1 -c fsync=off`;
      await pgTool('pg_ctl', ['-D', data, '-l', path.join(this.dir, 'log'), '-o', options, '-w', 'start']);
      await untilAccepting(this.port);
    } else {
      await pgTool('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']);
    }
  }

  /** A fast shutdown (every connection cut), then a start on the same port and data. */
  async restart(downMs = 500): Promise<void> {
    await this.pgCtl('stop');
    await sleep(downMs);
    await this.pgCtl('start');
  }

  async close(): Promise<void> {
    await this.pgCtl('stop').catch(() => {});
    await rm(this.dir, { recursive: true, force: true });
  }
}
