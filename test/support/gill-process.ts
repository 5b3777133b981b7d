import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from './own-services.ts';

/**
 * The real CLI roles (`node bin/gill.mjs bot|worker`) in child processes, with their metrics port, for
 * the tests that scrape, kill and restart them.
 */

export interface GillProcess {
  readonly child: ChildProcess;
  readonly metricsUrl: string;
  /** Everything written to stdout and stderr so far (pino JSON lines). */
  readonly output: string[];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Waits until /readyz answers 200. */
  ready(timeoutMs?: number): Promise<void>;
  scrape(): Promise<string>;
  /** Sends the signal and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export async function spawnGill(role: 'bot' | 'worker', env: Record<string, string>): Promise<GillProcess> {
  const port = await freePort();
  const child = spawn(process.execPath, ['bin/gill.mjs', role], {
    env: { ...process.env, GILL_LOG_LEVEL: 'info', ...env, GILL_METRICS_PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  child.stdout!.on('data', (chunk) => output.push(String(chunk)));
  child.stderr!.on('data', (chunk) => output.push(String(chunk)));
  const exited = once(child, 'exit').then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
  }));
  const base = `http://127.0.0.1:${port}`;
  return {
    child,
    metricsUrl: `${base}/metrics`,
    output,
    exited,
    async ready(timeoutMs = 60_000) {
      const deadline = Date.now() + timeoutMs;
      let last = 'no answer';
      while (Date.now() < deadline) {
        if (child.exitCode !== null) throw new Error(`gill ${role} exited: ${output.join('').slice(-2000)}`);
        try {
          const response = await fetch(`${base}/readyz`);
          if (response.status === 200) return;
          last = await response.text();
        } catch (error) {
          last = String(error);
        }
        await sleep(200);
      }
      throw new Error(`gill ${role} not ready after ${timeoutMs} ms: ${last}`);
    },
    scrape: async () => (await fetch(`${base}/metrics`)).text(),
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** One sample of a metric in the Prometheus text format, matched by some of its labels. */
export function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const wanted = Object.entries(labels).map(([key, value]) => `${key}="${value}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const inside = line.includes('{') ? line.slice(line.indexOf('{') + 1, line.indexOf('}')) : '';
    if (wanted.every((pair) => inside.split(',').includes(pair))) return Number(line.split(' ').at(-1));
  }
  return undefined;
}
