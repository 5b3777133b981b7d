import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadBundle } from '../src/engine/bundle.ts';
import { GillTokenizer } from '../src/engine/gill/tokenizer.ts';
import { BundleError, readManifest } from '../src/engine/manifest.ts';
import { makeRandomBundle, torchAvailable } from './support/random-bundle.ts';

const torchUp = await torchAvailable();

describe.skipIf(!torchUp)('bundle loading and validation', () => {
  let source: { dir: string; remove(): Promise<void> };
  const copies: string[] = [];

  beforeAll(async () => {
    source = await makeRandomBundle(1);
  });
  afterAll(async () => {
    await source?.remove();
    await Promise.all(copies.map((d) => rm(d, { recursive: true, force: true })));
  });

  /** A copy of the random bundle with its manifest edited. */
  async function variant(
    // biome-ignore lint/suspicious/noExplicitAny: tests break the manifest in ways its type forbids
    edit: (manifest: any) => void,
    files?: (dir: string) => Promise<void>,
  ) {
    const dir = await mkdtemp(path.join(tmpdir(), 'gill-bundle-variant-'));
    copies.push(dir);
    await cp(source.dir, dir, { recursive: true });
    const manifest = JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8'));
    edit(manifest);
    await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(manifest));
    await files?.(dir);
    return dir;
  }

  async function loadError(dir: string): Promise<BundleError> {
    const error = await loadBundle(dir, { threads: 1 }).then(
      async (b) => {
        await b.close();
        return null;
      },
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(BundleError);
    return error as BundleError;
  }

  it('loads every graph, checks names and shapes, and warms up', async () => {
    const bundle = await loadBundle(source.dir, { threads: 1 });
    try {
      expect(Object.keys(bundle.sessions).sort()).toEqual(
        [
          'decision',
          'imageEncoder',
          'imageRetrieval',
          'lm',
          'lmEmbed',
          'mapper',
          'textEncoder',
          'textRetrieval',
          'unet',
          'vaeDecoder',
          'visualPrefix',
        ].sort(),
      );
      expect(bundle.manifest.name).toBe('random-test');
      expect(bundle.threads).toBe(1);
      expect(bundle.decisionUsesRetrievalScore).toBe(false);
    } finally {
      await bundle.close();
    }
  });

  it('loads a decision graph that also takes retrieval_score, and refuses any other extra input', async () => {
    const scored = await makeRandomBundle(1, { decisionInputs: ['hidden', 'retrieval_score'] });
    const misnamed = await makeRandomBundle(1, { decisionInputs: ['hidden', 'best_score'] });
    try {
      // The warm-up runs the graph, so this also checks that the score is fed.
      const bundle = await loadBundle(scored.dir, { threads: 1 });
      expect(bundle.decisionUsesRetrievalScore).toBe(true);
      await bundle.close();
      const error = await loadError(misnamed.dir);
      expect(error.message).toContain('gill.decision');
      expect(error.message).toContain('unexpected inputs best_score');
    } finally {
      await scored.remove();
      await misnamed.remove();
    }
  });

  it('names the folder when there is no manifest', async () => {
    const error = await loadError(path.join(source.dir, 'nope'));
    expect(error.message).toContain('manifest.json');
    expect(error.message).toContain('ENOENT');
  });

  it('names every invalid manifest field', async () => {
    const dir = await variant((m) => {
      m.lm.hiddenSize = -3;
      delete m.vision.mean;
      m.defaults.scheduler = 'euler';
    });
    const error = await loadError(dir);
    expect(error.message).toContain('lm.hiddenSize');
    expect(error.message).toContain('vision.mean');
    expect(error.message).toContain('defaults.scheduler');
    await expect(readManifest(dir)).rejects.toThrow(/invalid/);
  });

  it('rejects token ids outside the vocabulary and inconsistent head sizes', async () => {
    const dir = await variant((m) => {
      m.lm.imgTokenIds[3] = m.lm.vocabSize + 5;
      m.lm.numHeads = 3;
    });
    const error = await loadError(dir);
    expect(error.message).toContain('lm.imgTokenIds[3]');
    expect(error.message).toContain('lm.numHeads');
  });

  it('names a missing graph file and its manifest field', async () => {
    const dir = await variant((m) => {
      m.gill.mapper = 'missing_mapper.onnx';
    });
    const error = await loadError(dir);
    expect(error.message).toContain('gill.mapper');
    expect(error.message).toContain('missing_mapper.onnx');
  });

  it('checks the optional reply-image graph like the others when the manifest names one', async () => {
    const missing = await loadError(
      await variant((m) => {
        m.gill.replyImage = 'missing_reply_image.onnx';
      }),
    );
    expect(missing.message).toContain('gill.replyImage');
    expect(missing.message).toContain('missing_reply_image.onnx');
    // The decision graph takes the same input, but its output is "logits", not "logit".
    const wrong = await loadError(
      await variant((m) => {
        m.gill.replyImage = 'decision.onnx';
      }),
    );
    expect(wrong.message).toContain('gill.replyImage');
    expect(wrong.message).toContain('missing outputs logit');
  });

  it('refuses paths that leave the bundle folder', async () => {
    const dir = await variant((m) => {
      m.lm.decoder = '../lm.onnx';
    });
    expect((await loadError(dir)).message).toContain('lm.decoder');
  });

  it('says which graph has the wrong inputs or outputs', async () => {
    // The decision head's graph in place of the retrieval head: input "hidden" fits, output "logits" does not.
    const dir = await variant((m) => {
      m.gill.textRetrieval = 'decision.onnx';
    });
    const error = await loadError(dir);
    expect(error.message).toContain('gill.textRetrieval');
    expect(error.message).toContain('missing outputs embedding');
  });

  it('catches a dimension the graphs disagree with, naming the graph', async () => {
    const dir = await variant((m) => {
      m.gill.retrievalDim = 99;
    });
    const error = await loadError(dir);
    expect(error.message).toContain('gill.imageRetrieval');
    expect(error.message).toMatch(/\[1,16\].*\[1,99\]/);
  });

  it('catches a corrupt ONNX file', async () => {
    const dir = await variant(
      () => {},
      (d) => writeFile(path.join(d, 'unet.onnx'), 'not a graph'),
    );
    const error = await loadError(dir);
    expect(error.message).toContain('diffusion.unet');
  });

  it('checks the tokenizer against the manifest [IMG] ids', async () => {
    const manifest = await readManifest(source.dir);
    const json = JSON.parse(await readFile(path.join(source.dir, 'tokenizer.json'), 'utf8'));
    const swapped = { ...manifest.lm, imgTokenIds: [...manifest.lm.imgTokenIds].reverse() };
    expect(() => new GillTokenizer(json, swapped)).toThrow(/\[IMG0\] encodes to \[\d+\], the manifest says/);
  });
});
