import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serviceAvailable } from './support/services.ts';

/**
 * The converter of issue #11 (models/convert) without the real weights: models/convert/tests/parity.py writes
 * shrunk random checkpoints in the real layouts, converts them (fp32 on Debian's torch 1.13 when present,
 * fp16 on the venv's torch 2.x), and compares ONNX Runtime with transformers' PyTorch models and with
 * reference modules. This file asserts on its report, one claim per test.
 */

const run = promisify(execFile);
const VENV_PYTHON = '.venv-convert/bin/python';
const DEBIAN_EXTRAS = '.venv-convert/debian-extras'; // `tokenizers` for Debian's python (see .ci/run)
const TOLERANCE = 1e-4;

const venvUp = await serviceAvailable('the converter venv (.venv-convert, made by .ci/run)', async () => {
  if (!existsSync(VENV_PYTHON))
    throw new Error(
      `${VENV_PYTHON} is missing: python3 -m venv .venv-convert && PIP_INDEX_URL=file:///opt/pypi/simple .venv-convert/bin/pip install -r models/convert/requirements.txt`,
    );
  await run(VENV_PYTHON, ['-c', 'import torch, transformers, onnxruntime, onnx, tokenizers']);
});
// Debian's torch 1.13 converts the fp32 bundle when present (CI installs it); else the venv's torch does.
const debianTorch = venvUp
  ? await serviceAvailable("Debian's torch 1.13 (/usr/bin/python3 with python3-torch, python3-onnx)", () =>
      run('/usr/bin/python3', ['-c', 'import torch, onnx, tokenizers'], {
        env: { ...process.env, PYTHONPATH: DEBIAN_EXTRAS },
      }),
    )
  : false;

interface Report {
  checks: Record<string, { ok: boolean; detail?: unknown }>;
  figures: Record<string, number | string>;
}

describe.skipIf(!venvUp)('models/convert: GILL + OPT + CLIP + SD 1.5 → gill-bundle/2', () => {
  let report: Report;
  let work: string;
  let bundle32: string;
  let bundle16: string;

  const checks = (fragment: string) => {
    const found = Object.entries(report.checks).filter(([name]) => name.includes(fragment));
    expect(found.length, `no check named like "${fragment}"`).toBeGreaterThan(0);
    for (const [name, result] of found) expect(result, name).toMatchObject({ ok: true });
  };
  const figure = (name: string) => {
    const value = report.figures[name];
    expect(typeof value, name).toBe('number');
    return value as number;
  };

  beforeAll(async () => {
    work = await mkdtemp(path.join(tmpdir(), 'gill-converted-'));
    bundle32 = path.join(work, 'fp32');
    bundle16 = path.join(work, 'fp16');
    const env = {
      ...process.env,
      ...(debianTorch
        ? { CONVERT_PYTHON: '/usr/bin/python3', CONVERT_PYTHONPATH: path.resolve(DEBIAN_EXTRAS) }
        : {}),
      OMP_NUM_THREADS: '2',
    };
    const { stdout } = await run(VENV_PYTHON, ['models/convert/tests/parity.py', bundle32, bundle16], {
      env,
      maxBuffer: 16 * 1024 * 1024,
    }).catch((error: { stdout?: string; stderr?: string }) => {
      // A failed check exits 1 with the report on stdout: the tests below say which.
      if (error.stdout?.trim().startsWith('{')) return { stdout: error.stdout };
      throw new Error(`parity.py crashed:\n${error.stderr?.slice(-4000)}`);
    });
    report = JSON.parse(stdout) as Report;
  }, 900_000);

  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('converts fp32 (on torch 1.13 where Debian has it) and fp16 (torch 2.x)', () => {
    checks('convert.py --dtype fp32 exits 0');
    checks('convert.py --dtype fp16 exits 0');
    if (debianTorch) expect(String(report.figures.fp32_conversion_torch)).toMatch(/^1\.13/);
  });

  it('OPT: logits and final hidden states match transformers within 1e-4, left padding and KV-cache steps', () => {
    checks('lm logits and hidden states');
    checks('lm present grows');
    for (const name of ['prompt', 'step1', 'step2'])
      for (const what of ['logits', 'hidden'])
        expect(figure(`lm_${name}_${what}_max_abs`)).toBeLessThanOrEqual(TOLERANCE);
  });

  it("CLIP: pooler_output and the text tower's last_hidden_state match transformers within 1e-4", () => {
    checks('CLIP pooler_output');
    expect(figure('clip_pooler_output_max_abs')).toBeLessThanOrEqual(TOLERANCE);
    expect(figure('clip_text_last_hidden_state_max_abs')).toBeLessThanOrEqual(TOLERANCE);
  });

  it('GILL heads match their references (the mapper against torch.nn.Transformer)', () => {
    checks('GILL heads');
    expect(figure('gill_mapper_max_abs')).toBeLessThanOrEqual(TOLERANCE);
  });

  it('UNet and VAE decoder graphs match the torch modules', () => {
    checks('UNet and VAE decoder graphs');
    checks('VAE decoder output');
    expect(figure('unet_max_abs')).toBeLessThanOrEqual(TOLERANCE);
  });

  it('SD 1.5: the converter consumes exactly the published key/shape listings; strict loading names bad keys', () => {
    checks('SD 1.5 listings hold the published totals');
    checks('consumes exactly the SD 1.5 UNet keys');
    checks('consumes exactly the SD 1.5 VAE decoder keys');
    checks('strict UNet load');
    checks('strict GILL load');
    checks('decision_model.pth.tar structure');
    expect(figure('sd15_unet_params')).toBe(859_520_964);
    expect(figure('sd15_vae_decoder_params')).toBe(49_490_199);
  });

  it('tokenizers: [IMG0..7] are 50266..50273, and both agree with transformers on the same files', () => {
    checks('[IMG0..7] encode');
    checks('LM tokenizer agrees');
    checks('LM tokenizer prepends BOS');
    checks('text tokenizer agrees');
  });

  it('manifest gill-bundle/2: graphs with sizes and hashes, external data, provenance, licences', () => {
    checks('manifest graphs');
    checks('manifest lm section');
    checks('manifest diffusion and defaults');
    checks('provenance hashes');
  });

  it('fp16 bundle runs with a float16 KV cache; int8 LM keeps its interface with a measured error', () => {
    checks('fp16 manifest');
    checks('fp16 LM runs');
    checks('int8 LM');
    expect(figure('lm_int8_hidden_relative_l2')).toBeGreaterThan(0);
  });

  it('every check of the report passed', () => {
    const failed = Object.entries(report.checks).filter(([, r]) => !r.ok);
    expect(failed).toEqual([]);
  });

  /**
   * `gill` as a person runs it, on a converted bundle (outputs are noise: random weights). Each command starts
   * the engine on the bundle (checksums, warm-up), hence the long timeout on a loaded machine.
   */
  const gill = (bundle: string, ...cli: string[]) =>
    run(process.execPath, ['bin/gill.mjs', ...cli], {
      env: {
        ...process.env,
        GILL_MODEL: bundle,
        GILL_DATA_DIR: path.join(bundle, '.data'),
        GILL_THREADS: '2',
        DATABASE_URL: '',
        REDIS_URL: '',
      },
      encoding: 'utf8',
    }).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => e,
    );

  it.each([
    ['fp32', () => bundle32],
    ['fp16', () => bundle16],
  ])(
    'the engine runs the converted %s bundle: gill imagine, ask and find',
    async (_, dir) => {
      const bundle = dir();
      const manifest = JSON.parse(await readFile(path.join(bundle, 'manifest.json'), 'utf8'));
      expect(manifest.format).toBe('gill-bundle/2');

      const file = path.join(work, `imagined-${path.basename(bundle)}.png`);
      const made = await gill(bundle, 'imagine', 'a red star', '--out', file, '--steps', '2', '--seed', '3');
      expect(made.stderr).toBe('');
      expect(made.code).toBe(0);
      // 8×8 latents through three upsampling VAE levels; PNDM is the manifest's default sampler.
      expect(made.stdout).toMatch(/: 64×64, seed 3, \d+ pndm steps/);
      const meta = await sharp(file).metadata();
      expect([meta.format, meta.width, meta.height]).toEqual(['png', 64, 64]);

      const photo = path.join(work, 'photo.png');
      await sharp({ create: { width: 300, height: 200, channels: 3, background: '#c33' } })
        .png()
        .toFile(photo);
      const asked = await gill(
        bundle,
        'ask',
        'what is in this picture?',
        `@${photo}`,
        '--out',
        path.join(work, 'asked'),
      );
      expect(asked.code).toBe(0);
      expect(asked.stdout).toMatch(/^decision: (no image|generate|retrieve)/m);

      const gallery = path.join(work, `gallery-${path.basename(bundle)}`);
      await mkdir(gallery, { recursive: true });
      for (const [name, colour] of [
        ['red', '#f00'],
        ['blue', '#00f'],
      ] as const)
        await sharp({ create: { width: 240, height: 240, channels: 3, background: colour } })
          .png()
          .toFile(path.join(gallery, `${name}.png`));
      const indexed = await gill(bundle, 'index', gallery, '--community', 'c');
      expect(indexed.stdout).toContain('indexed 2 image(s) into community "c"');
      const found = await gill(bundle, 'find', 'a red square', '-k', '2', '--community', 'c');
      expect(found.code).toBe(0);
      const lines = found.stdout.trim().split('\n');
      expect(lines).toHaveLength(2);
      for (const line of lines)
        expect(line).toMatch(/^\d\. -?\d\.\d{3} {2}(red|blue) {2}\(image \d+, 240×240\)$/);
    },
    600_000,
  );

  it('a missing input folder is a clear error naming the file, exit code 2', async () => {
    const missing = path.join(tmpdir(), 'no-such-gill-input');
    const result = await run(VENV_PYTHON, [
      'models/convert/convert.py',
      ...[
        '--gill',
        missing,
        '--opt',
        missing,
        '--clip',
        missing,
        '--sd',
        missing,
        '--out',
        path.join(work, 'unused'),
      ],
    ]).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => e,
    );
    expect(result.code).toBe(2);
    expect(result.stderr).toContain(
      `convert: --opt config.json: ${path.join(missing, 'config.json')} does not exist`,
    );
  });
});
