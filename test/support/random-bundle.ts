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

export async function makeRandomBundle(seed = 0): Promise<{ dir: string; remove(): Promise<void> }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'gill-random-bundle-'));
  await run(PYTHON, [path.join(import.meta.dirname, 'random_bundle.py'), dir, String(seed)]);
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}
