import { readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Config } from '../../src/config.ts';
import type { Engine, JobPayload, JobResult } from '../../src/jobs.ts';
import type { EngineThreadContext } from '../../src/queue/engine-thread.ts';

/**
 * An engine double for the engine thread: each run blocks its thread synchronously for BLOCK_MS, as a
 * heavy model's inference does, after leaving a marker file in the data directory (so a test knows a run
 * is under way), then answers through the bridged store as the real engine does.
 */

export const BLOCK_MS = 5000;
const MARKER = 'engine-run-';

export function runsStarted(dataDir: string): number {
  return readdirSync(dataDir).filter((name) => name.startsWith(MARKER)).length;
}

export async function openBlockingEngine(config: Config, context: EngineThreadContext): Promise<Engine> {
  let runs = 0;
  return {
    async run(payload: JobPayload): Promise<JobResult> {
      runs += 1;
      writeFileSync(path.join(config.dataDir, `${MARKER}${runs}`), '');
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, BLOCK_MS);
      await context.store?.communities.ensure(payload.community);
      return { kind: payload.kind, text: 'done after a long think', images: [], decision: null, notes: [] };
    },
    async close() {},
  };
}
