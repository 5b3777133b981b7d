import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../src/config.ts';
import { checkModel } from '../src/roles/doctor.ts';
import { makeRandomBundle, torchAvailable } from './support/random-bundle.ts';

const torchUp = await torchAvailable();

/** `gill doctor`'s model check on random bundles in both manifest formats. */
describe.skipIf(!torchUp)('gill doctor: the model bundle', () => {
  let v2: Awaited<ReturnType<typeof makeRandomBundle>>;
  let v1: Awaited<ReturnType<typeof makeRandomBundle>>;

  beforeAll(async () => {
    [v2, v1] = await Promise.all([makeRandomBundle(2, { format: 2 }), makeRandomBundle(2)]);
  });
  afterAll(async () => {
    await v2?.remove();
    await v1?.remove();
  });

  const config = (modelDir: string) =>
    ({ modelDir, GILL_EXECUTION_PROVIDER: 'cpu', GILL_THREADS: 1 }) as Config;

  it('reports format, size, dtypes, memory, provenance, licences and the checksum check', async () => {
    const check = await checkModel(config(v2.dir));
    expect(check.ok).toBe(true);
    const text = check.lines.join('\n');
    expect(check.lines[0]).toBe(`random-test (gill-bundle/2) at ${v2.dir}: every graph loads (cpu)`);
    expect(text).toMatch(/[\d.]+ MB on disk; graphs float16 ×7, float32 ×4; KV cache float16/);
    expect(text).toMatch(
      /memory: the weights take about [\d.]+ MB; this machine has [\d.]+ GB, [\d.]+ [MG]B free: fits/,
    );
    expect(text).toContain('LM gill-tiny hidden 32, 2 layers, 128 positions');
    expect(text).toContain('dpm++, 4 steps, guidance 5');
    expect(text).toMatch(/converted by test\/support\/random_bundle\.py from seed [0-9a-f]{12}…/);
    expect(text).toContain('licences: random weights CC0-1.0');
    expect(text).toMatch(/14 files: sizes and sha256 match the manifest \([\d.]+ s to hash/);
  });

  it('reports a v1 bundle as float32, without file checks', async () => {
    const check = await checkModel(config(v1.dir));
    expect(check.ok).toBe(true);
    expect(check.lines[0]).toBe(`random-test (gill-bundle/1) at ${v1.dir}: every graph loads (cpu)`);
    expect(check.lines.join('\n')).toContain('graphs float32 ×11');
    expect(check.lines.join('\n')).not.toContain('sha256');
  });

  it('fails with the reason when the bundle does not load', async () => {
    const check = await checkModel(config(`${v1.dir}/missing`));
    expect(check.ok).toBe(false);
    expect(check.lines.join('\n')).toMatch(/cannot read .*manifest\.json \(ENOENT\)/);
  });
});
