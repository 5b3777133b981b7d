import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REQUEST_HEADER } from '../src/bots/playground/server.ts';

/**
 * `gill start` ends on the first SIGTERM, cleanly (status 0) and within a bounded time, whether the
 * signal comes while it starts (no job yet) or while jobs run (the seed gallery's index jobs and a chat
 * message just posted). Each run is a real `node bin/gill.mjs start` on its own data directory.
 */

const RUNS = 5;
/** The shutdown deadline of `gill start` (src/roles/start.ts) plus a margin for the process to end. */
const BOUND_MS = 35_000;
const dirs: string[] = [];

afterAll(async () => {
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

interface Started {
  child: ChildProcess;
  output: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
}

async function startGill(): Promise<Started & { port: number }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'gill-sigterm-'));
  dirs.push(dir);
  const port = await freePort();
  const child = spawn(process.execPath, ['bin/gill.mjs', 'start'], {
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      GILL_DATA_DIR: dir,
      GILL_PORT: String(port),
      GILL_LOG_LEVEL: 'info',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (chunk) => {
    output += String(chunk);
  });
  child.stderr!.on('data', (chunk) => {
    output += String(chunk);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal, at: Date.now() })),
  );
  return { child, port, output: () => output, exited };
}

async function until(probe: () => boolean, what: string, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** SIGTERM once; the process must end by itself, cleanly, within BOUND_MS. */
async function terminate(started: Started): Promise<void> {
  const sent = Date.now();
  started.child.kill('SIGTERM');
  const timer = setTimeout(() => started.child.kill('SIGKILL'), BOUND_MS);
  const { code, signal, at } = await started.exited;
  clearTimeout(timer);
  // A signal here: the default action of SIGTERM (no handler: nothing closed), or our SIGKILL after BOUND_MS.
  expect(signal, `ended by ${signal}, not by its own shutdown\n${started.output()}`).toBeNull();
  expect(code, started.output()).toBe(0);
  expect(at - sent).toBeLessThan(BOUND_MS);
}

describe('gill start on SIGTERM', () => {
  for (let run = 1; run <= RUNS; run++) {
    it(`exits when signalled while starting, with no job yet (run ${run})`, {
      timeout: 180_000,
    }, async () => {
      const started = await startGill();
      // Early in start-up, at a different point each run.
      await until(() => started.output().length > 0 || started.child.exitCode !== null, 'the first output');
      await new Promise((resolve) => setTimeout(resolve, run * 300));
      await terminate(started);
    });
  }

  for (let run = 1; run <= RUNS; run++) {
    it(`exits when signalled while jobs run (run ${run})`, { timeout: 180_000 }, async () => {
      const started = await startGill();
      await until(() => started.output().includes('to talk to the bot'), 'the playground URL');
      const form = new FormData();
      form.set('text', 'hello there');
      form.set('clientKey', `sigterm-${run}-${Date.now()}`);
      form.set('userId', 'u1');
      form.set('userName', 'Tester');
      const posted = await fetch(`http://127.0.0.1:${started.port}/api/messages`, {
        method: 'POST',
        headers: { [REQUEST_HEADER]: '1' },
        body: form,
      });
      expect(posted.status).toBe(200);
      await terminate(started);
    });
  }
});
