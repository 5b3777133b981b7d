import { setTimeout as sleep } from 'node:timers/promises';
import type { Engine, JobContext } from '../../src/jobs.ts';
import { type JobPayload, type JobResult, UserInputError } from '../../src/jobs.ts';

/**
 * A scriptable stand-in for the GILL engine. The script travels inside the job's payload (an imagine
 * prompt `fake:{json}`), so a worker in another process or thread follows the same script. Index jobs
 * (fakeIndexPayload) carry only a tag, their image id.
 */

export interface FakeScript {
  /** A name, so tests can tell jobs apart in the engine's log. */
  tag?: string;
  /** Progress steps reported, one every stepMs. */
  steps?: number;
  stepMs?: number;
  /** Throw a transient error on the first N runs of this script (counted per engine). */
  failTimes?: number;
  /** Throw this UserInputError message. */
  userError?: string;
  /** Wait until aborted, then throw the abort reason. */
  hang?: boolean;
  /** Block the thread synchronously this long (as synchronous inference does). */
  blockMs?: number;
}

const PREFIX = 'fake:';

export function fakePayload(script: FakeScript = {}, community = 'queue-tests'): JobPayload {
  return {
    kind: 'imagine',
    community: { platform: 'cli', externalId: community },
    prompt: `${PREFIX}${JSON.stringify(script)}`,
  };
}

export function fakeIndexPayload(tag: string, community = 'queue-tests'): JobPayload {
  return { kind: 'index', community: { platform: 'cli', externalId: community }, imageId: tag };
}

export function scriptOf(payload: JobPayload): FakeScript {
  if (payload.kind === 'index') return { tag: payload.imageId };
  if (payload.kind !== 'imagine' || !payload.prompt.startsWith(PREFIX)) return {};
  return JSON.parse(payload.prompt.slice(PREFIX.length)) as FakeScript;
}

export function fakeResult(script: FakeScript): JobResult {
  return { kind: 'imagine', text: `done ${script.tag ?? ''}`.trim(), images: [], decision: null, notes: [] };
}

export class FakeEngine implements Engine {
  /** Every run started: tag, and when (ms, performance clock). */
  readonly runs: { tag: string | undefined; at: number; signal: AbortSignal }[] = [];
  closed = false;
  private readonly failures = new Map<string, number>();

  async run(payload: JobPayload, ctx: JobContext): Promise<JobResult> {
    const script = scriptOf(payload);
    this.runs.push({ tag: script.tag, at: performance.now(), signal: ctx.signal });
    const key = JSON.stringify(script);
    const failed = this.failures.get(key) ?? 0;
    if (failed < (script.failTimes ?? 0)) {
      this.failures.set(key, failed + 1);
      throw new Error(`transient failure ${failed + 1}`);
    }
    if (script.userError) throw new UserInputError(script.userError);
    if (script.blockMs) {
      const until = Date.now() + script.blockMs;
      while (Date.now() < until) {
        // Busy: the event loop of this thread is blocked.
      }
    }
    const steps = script.steps ?? 0;
    for (let step = 1; step <= steps; step++) {
      await sleep(script.stepMs ?? 1, undefined, { signal: ctx.signal }).catch(() => {
        throw ctx.signal.reason;
      });
      ctx.progress({ stage: 'generating', step, steps });
    }
    if (script.hang) {
      await new Promise((_, reject) => {
        if (ctx.signal.aborted) reject(ctx.signal.reason);
        ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason), { once: true });
      });
    }
    return fakeResult(script);
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

/** Factory in the shape engine threads load (`startEngineThread({ module, exportName: 'createFakeEngine' })`). */
export async function createFakeEngine(): Promise<Engine> {
  return new FakeEngine();
}
