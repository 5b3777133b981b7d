import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { serviceAvailable } from './services.ts';

/** A bundle of small random graphs (random_bundle.py beside this file), made with Debian's PyTorch. */

const run = promisify(execFile);
const PYTHON = '/usr/bin/python3';

export function torchAvailable(): Promise<boolean> {
  return serviceAvailable('PyTorch (/usr/bin/python3 with torch and onnx, for the random test bundle)', () =>
    run(PYTHON, ['-c', 'import torch, onnx']),
  );
}

export interface RandomBundleOptions {
  /**
   * Inputs of decision.onnx: ['hidden'] (the default) or ['hidden', name], where the [B,1] input `name`
   * (`retrieval_score` for the engine) strongly moves the decision: "retrieve" above 0.5, "generate" below.
   */
  decisionInputs?: string[];
  /**
   * 2: a gill-bundle/2 with float16 graphs (weights and inputs/outputs, so a float16 KV cache), external data
   * files, sizes and checksums; the same weights as format 1 for a seed, rounded to float16. Default 1.
   */
  format?: 1 | 2;
}

export async function makeRandomBundle(
  seed = 0,
  options: RandomBundleOptions = {},
): Promise<{ dir: string; remove(): Promise<void> }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'gill-random-bundle-'));
  const decision = options.decisionInputs ? ['--decision-inputs', options.decisionInputs.join(',')] : [];
  const format = ['--format', String(options.format ?? 1)];
  await run(PYTHON, [
    path.join(import.meta.dirname, 'random_bundle.py'),
    dir,
    String(seed),
    ...decision,
    ...format,
  ]);
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}
