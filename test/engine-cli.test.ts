import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeRandomBundle, torchAvailable } from './support/random-bundle.ts';
import { createTempDatabase, IN_CI, probePostgres } from './support/services.ts';

/** `gill ask | imagine | index | find` as a person runs them, on a random bundle. */

const run = promisify(execFile);
const torchUp = await torchAvailable();

describe.skipIf(!torchUp)('gill engine commands', () => {
  let bundle: { dir: string; remove(): Promise<void> };
  let work: string;
  let database: { url: string; drop(): Promise<void> } | undefined;
  let env: NodeJS.ProcessEnv;

  const gill = (...args: string[]) =>
    run(process.execPath, ['bin/gill.mjs', ...args], { env, encoding: 'utf8' }).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: { code: number; stdout: string; stderr: string }) => ({
        code: e.code,
        stdout: e.stdout,
        stderr: e.stderr,
      }),
    );

  beforeAll(async () => {
    bundle = await makeRandomBundle(5);
    work = await mkdtemp(path.join(tmpdir(), 'gill-cli-'));
    const postgresUp = await probePostgres().then(
      () => true,
      (error: unknown) => {
        if (IN_CI) throw error;
        return false;
      },
    );
    // The embedded PGlite is the default; a temporary Postgres database only makes the test faster.
    if (postgresUp) database = await createTempDatabase('engine_cli');
    env = {
      ...process.env,
      GILL_MODEL: bundle.dir,
      GILL_DATA_DIR: path.join(work, 'data'),
      GILL_THREADS: '1',
      DATABASE_URL: database?.url ?? '',
    };
    const gallery = path.join(work, 'gallery', 'nested');
    await mkdir(gallery, { recursive: true });
    for (const [name, colour] of [
      ['red', '#f00'],
      ['blue', '#00f'],
      ['green', '#0f0'],
    ]) {
      await sharp({ create: { width: 32, height: 32, channels: 3, background: colour! } })
        .png()
        .toFile(path.join(gallery, `${name}.png`));
    }
    await writeFile(path.join(gallery, 'broken.png'), 'not an image');
    await writeFile(path.join(gallery, 'notes.txt'), 'not an image either');
    await sharp({ create: { width: 40, height: 30, channels: 3, background: '#0a0' } })
      .jpeg()
      .toFile(path.join(work, 'photo.jpg'));
  });
  afterAll(async () => {
    await database?.drop();
    await bundle?.remove();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('indexes a folder, skipping what is not a readable image, then finds by text', async () => {
    const indexed = await gill('index', path.join(work, 'gallery'), '--community', 'team');
    expect(indexed.stdout).toContain('indexed 3 image(s) into community "team" (3 in its gallery)');
    expect(indexed.stderr).toMatch(/skipped .*broken\.png: The file is not an image/);
    expect(indexed.code).toBe(0);

    const found = await gill('find', 'a red square', '-k', '2', '--community', 'team');
    expect(found.code).toBe(0);
    const lines = found.stdout.trim().split('\n');
    expect(lines).toHaveLength(2);
    for (const line of lines)
      expect(line).toMatch(/^\d\. -?\d\.\d{3} {2}(red|blue|green) {2}\(image \d+, 32×32\)$/);

    const elsewhere = await gill('find', 'a red square', '--community', 'nobody');
    expect(elsewhere.stdout).toContain('note: No indexed images in this community matched.');
  });

  it('asks with text and an image, printing the reply and the decision', async () => {
    const out = path.join(work, 'out');
    const asked = await gill(
      'ask',
      'my favourite colour is green',
      `@${path.join(work, 'photo.jpg')}`,
      'hello',
      '--out',
      out,
    );
    expect(asked.code).toBe(0);
    expect(asked.stdout).toMatch(/^decision: (no image|generate|retrieve)/m);
  });

  it('says which image file is bad and exits with the input-error code', async () => {
    const asked = await gill('ask', 'look', `@${path.join(work, 'gallery', 'nested', 'broken.png')}`);
    expect(asked.code).toBe(2);
    expect(asked.stderr).toMatch(/error: .*broken\.png: The file is not an image/);
    const missing = await gill('ask', `@${path.join(work, 'nope.png')}`);
    expect(missing.stderr).toMatch(/cannot read .*nope\.png: ENOENT/);
  });

  it('imagines a PNG from a prompt with the given steps and seed', async () => {
    const file = path.join(work, 'imagined', 'star.png');
    const made = await gill('imagine', 'a red star', '--out', file, '--steps', '3', '--seed', '4');
    expect(made.code).toBe(0);
    expect(made.stdout).toMatch(/star\.png: 16×16, seed 4, 3 ddim steps/);
    expect((await sharp(file).metadata()).format).toBe('png');
    expect(await readdir(path.dirname(file))).toEqual(['star.png']);
    const bad = await gill('imagine', 'x', '--out', file, '--scheduler', 'euler');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--scheduler must be one of ddim, pndm, dpm++, dpmsolver++');
  });
});
