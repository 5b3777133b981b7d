import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Bundle, loadBundle } from '../src/engine/bundle.ts';
import { decode } from '../src/engine/gill/decode.ts';
import {
  decisionLogits,
  encodeImages,
  imageRetrievalEmbedding,
  mapperConditioning,
  softmax2,
  textRetrievalEmbedding,
  visualPrefix,
} from '../src/engine/gill/heads.ts';
import { embedTokens, LmSequence } from '../src/engine/gill/lm.ts';
import { GillModel } from '../src/engine/gill/model.ts';
import { type ConversationItem, dialoguePieces, type PromptSegment } from '../src/engine/gill/prompt.ts';
import { imageToPixelValues } from '../src/engine/images.ts';
import { IN_CI } from './support/services.ts';

/**
 * Parity of the TypeScript GILL path with the PyTorch reference (models/training/gill_tiny/pipeline.py
 * GillPipeline) on the tiny bundle's golden fixtures (<bundle>/fixtures/fixtures.json, gill_tiny/fixtures.py):
 * token ids, the image path, the [IMG] hidden states and every head on them, and greedy decoding.
 */

const BUNDLE = path.resolve(process.env.GILL_PARITY_BUNDLE ?? 'models/gill-tiny');
const FIXTURES = path.join(BUNDLE, 'fixtures', 'fixtures.json');
const HAVE_FIXTURES = existsSync(FIXTURES);
if (!HAVE_FIXTURES) {
  if (IN_CI) throw new Error(`CI=true but the golden fixtures are missing: ${FIXTURES}`);
  console.warn(`\n*** SKIPPING GILL parity tests: no golden fixtures at ${FIXTURES} yet ***\n`);
}

/** Tolerances as fixtures/README.md documents them: |ts − ref| ≤ abs + rel·|ref| for every value. */
const TOL = {
  pixels: { abs: 1e-6, rel: 0 },
  imageHeads: { abs: 1e-4, rel: 1e-4 },
  hidden: { abs: 1e-3, rel: 0 },
  probabilities: { abs: 1e-4, rel: 0 },
};
type Tolerance = (typeof TOL)[keyof typeof TOL];

interface Tensor {
  dims: number[];
  data: number[];
}
type Segment = string | { image: string };
interface DecodeCase {
  name: string;
  segments: Segment[];
  num_words: number;
  ret_scale_factor: number;
  gen_scale_factor: number;
  promptLength: number;
  ids: number[];
  text: string;
  stop: string;
  imgPosition: number | null;
  imgHidden?: Tensor;
  decisionProbs?: Tensor;
  textRetrievalEmbedding?: Tensor;
}
interface Fixtures {
  format: string;
  /** The retrieval_score fed with every [IMG0], when the bundle's decision graph takes one. */
  decisionRetrievalScore?: number | null;
  tokens: { text: string; ids: number[]; idsNoBos: number[] }[];
  image: {
    file: string;
    pixelValues: Tensor;
    pooled: Tensor;
    visualPrefix: Tensor;
    imageRetrievalEmbedding: Tensor;
  };
  imgPrompt: {
    text: string;
    ids: number[];
    imgHidden: Tensor;
    imgTokenEmbeds: Tensor;
    textRetrievalEmbedding: Tensor;
    textRetrievalNormalised: Tensor;
    mapperCond: Tensor;
    decisionProbs: Tensor;
  };
  decode: DecodeCase[];
}

function expectClose(actual: ArrayLike<number>, expected: Tensor | number[], tol: Tolerance, what: string) {
  const data = Array.isArray(expected) ? expected : expected.data;
  expect(actual.length, `${what}: length`).toBe(data.length);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < data.length; i++) {
    const excess = Math.abs(actual[i]! - data[i]!) / (tol.abs + tol.rel * Math.abs(data[i]!));
    if (!(excess <= worst)) {
      worst = excess;
      at = i;
    }
  }
  expect(
    worst,
    `${what}: worst at ${at} (${actual[at]} vs ${data[at]}), in units of the tolerance`,
  ).toBeLessThanOrEqual(1);
}

describe.skipIf(!HAVE_FIXTURES)('GILL parity with the PyTorch reference', () => {
  let fx: Fixtures;
  let bundle: Bundle;
  let model: GillModel;
  let scenePixels: Float32Array;

  beforeAll(async () => {
    fx = JSON.parse(await readFile(FIXTURES, 'utf8')) as Fixtures;
    bundle = await loadBundle(BUNDLE, { threads: 2 });
    model = new GillModel(bundle);
    scenePixels = (
      await imageToPixelValues(
        await readFile(path.join(BUNDLE, 'fixtures', fx.image.file)),
        bundle.manifest.vision,
      )
    ).pixels;
  });
  afterAll(async () => {
    await bundle?.close();
  });

  it('reads the fixture format it knows', () => {
    expect(fx.format).toBe('gill-fixtures/1');
  });

  it('tokenizes like the reference, with and without BOS, [IMG] strings included', () => {
    for (const t of fx.tokens) {
      expect(model.tokenizer.encodeText(t.text, { bos: true, fromUser: false }), t.text).toEqual(t.ids);
      expect(model.tokenizer.encodeText(t.text, { bos: false, fromUser: false }), t.text).toEqual(t.idsNoBos);
    }
  });

  it('preprocesses, encodes and projects the fixture image', async () => {
    expectClose(scenePixels, fx.image.pixelValues, TOL.pixels, 'pixel values');
    const pooled = await encodeImages(bundle, scenePixels, 1);
    expectClose(pooled, fx.image.pooled, TOL.imageHeads, 'pooled');
    expectClose(
      await visualPrefix(bundle, pooled, 1),
      fx.image.visualPrefix,
      TOL.imageHeads,
      'visual prefix',
    );
    const norm = Math.hypot(...fx.image.imageRetrievalEmbedding.data);
    expectClose(
      await imageRetrievalEmbedding(bundle, pooled),
      fx.image.imageRetrievalEmbedding.data.map((v) => v / norm),
      TOL.imageHeads,
      'image retrieval embedding (normalised)',
    );
    expectClose(
      await model.imageEmbedding(await readFile(path.join(BUNDLE, 'fixtures', fx.image.file))),
      fx.image.imageRetrievalEmbedding.data.map((v) => v / norm),
      TOL.imageHeads,
      'indexing path',
    );
  });

  it('gives the same [IMG] hidden states and heads for a text with the block appended', async () => {
    const p = fx.imgPrompt;
    const ids = model.tokenizer.encodeText(p.text, { bos: true, fromUser: false });
    expect(ids).toEqual(p.ids);
    const H = bundle.manifest.lm.hiddenSize;
    const r = model.tokenizer.imgIds.length;
    const step = await new LmSequence(bundle).feed(await embedTokens(bundle, ids));
    const hidden = step.hidden.slice((ids.length - r) * H, ids.length * H);
    expectClose(hidden, p.imgHidden, TOL.hidden, '[IMG] hidden states');
    expectClose(
      await embedTokens(bundle, model.tokenizer.imgIds),
      p.imgTokenEmbeds,
      TOL.hidden,
      '[IMG] token embeddings',
    );
    const img0 = hidden.subarray(0, H);
    expectClose(
      await textRetrievalEmbedding(bundle, img0),
      p.textRetrievalNormalised,
      TOL.hidden,
      'text retrieval embedding',
    );
    expectClose(
      await mapperConditioning(bundle, hidden),
      p.mapperCond,
      TOL.hidden,
      'GILLMapper conditioning',
    );
    expectClose(
      softmax2(await decisionLogits(bundle, img0, fx.decisionRetrievalScore ?? undefined)),
      p.decisionProbs,
      TOL.probabilities,
      'decision probabilities',
    );
    // The find path builds the same prompt from the bare query.
    const query = p.text.slice(0, p.text.indexOf('[IMG0]'));
    expectClose(
      (await model.queryEmbedding(query)).embedding,
      p.textRetrievalNormalised,
      TOL.hidden,
      'find query embedding',
    );
  });

  it('decodes greedily to the same tokens, [IMG] positions and hidden states', async () => {
    const H = bundle.manifest.lm.hiddenSize;
    for (const c of fx.decode) {
      let firstText = true;
      const segments: PromptSegment<Float32Array>[] = c.segments.map((s) => {
        if (typeof s !== 'string') return { type: 'image', image: scenePixels };
        const ids = model.tokenizer.encodeText(s, { bos: firstText, fromUser: false });
        firstText = false;
        return { type: 'tokens', ids };
      });
      const embeds = await model.embedPrompt(segments);
      expect(embeds.length / H, `${c.name}: prompt length`).toBe(c.promptLength);
      const sequence = new LmSequence(bundle);
      const first = await sequence.feed(embeds);
      const result = await decode(bundle, model.tokenizer, sequence, first.logits, {
        maxNewTokens: c.num_words,
        temperature: 0,
        topP: 1,
        seed: 0,
        retScaleFactor: c.ret_scale_factor,
        genScaleFactor: c.gen_scale_factor,
        maxImages: Number.POSITIVE_INFINITY,
        forceImage: false,
      });
      expect(result.ids, `${c.name}: tokens`).toEqual(c.ids);
      expect(result.images[0]?.position ?? null, `${c.name}: [IMG0] position`).toBe(c.imgPosition);
      if (c.imgPosition === null) {
        expect(model.tokenizer.decode(result.ids), `${c.name}: text`).toBe(c.text);
        continue;
      }
      expect(model.tokenizer.decode(result.ids.slice(0, c.imgPosition)), `${c.name}: text`).toBe(c.text);
      const block = result.images[0]!;
      expectClose(block.hidden, c.imgHidden!, TOL.hidden, `${c.name}: [IMG] hidden states`);
      const img0 = block.hidden.subarray(0, H);
      expectClose(
        softmax2(await decisionLogits(bundle, img0, fx.decisionRetrievalScore ?? undefined)),
        c.decisionProbs!,
        TOL.probabilities,
        `${c.name}: decision`,
      );
      const ret = c.textRetrievalEmbedding!.data;
      const norm = Math.hypot(...ret);
      expectClose(
        await textRetrievalEmbedding(bundle, img0),
        ret.map((v) => v / norm),
        TOL.hidden,
        `${c.name}: retrieval`,
      );
    }
  });

  it('folds casing as the LM was trained (lowercase text, the template markers kept)', () => {
    const ids = (text: string) => model.tokenizer.encodeText(text, { bos: true, fromUser: false });
    expect(ids('Q: Could you DRAW a Big circle?\nA: ok.\nQ: Thanks\nA:')).toEqual(
      ids('Q: could you draw a big circle?\nA: ok.\nQ: thanks\nA:'),
    );
    expect(model.tokenizer.decode(ids('Q: RED\nA:').slice(1))).toBe('Q: red\nA:');
  });

  it('lays out dialogues as the reference prompts them, and a chat turn decodes the same tokens', async () => {
    const dialogue = fx.decode.find((c) => c.name === 'dialogue_context')!;
    const conversation: ConversationItem<Uint8Array>[] = [
      { role: 'user', content: { type: 'text', text: 'my favourite colour is green.' } },
      { role: 'assistant', content: { type: 'text', text: 'nice choice!' } },
      {
        role: 'user',
        content: { type: 'text', text: 'draw a small star in the middle in my favourite colour.' },
      },
    ];
    expect(dialoguePieces(conversation, bundle.manifest.defaults.dialogueTemplate)).toEqual([
      { type: 'text', text: dialogue.segments[0] },
    ]);
    const interleaved = fx.decode.find((c) => c.name === 'interleaved_image')!;
    const scene = await readFile(path.join(BUNDLE, 'fixtures', fx.image.file));
    expect(
      dialoguePieces(
        [
          { role: 'user', content: { type: 'text', text: 'look at this.' } },
          { role: 'user', content: { type: 'image', image: scene } },
        ],
        bundle.manifest.defaults.dialogueTemplate,
      ),
    ).toEqual([
      { type: 'text', text: interleaved.segments[0] },
      { type: 'image', image: scene },
      { type: 'text', text: interleaved.segments[2] },
    ]);

    // The reference decodes with the fixture's factors, [IMG0] weighed anywhere (no imgAtReplyStart).
    const defaults = {
      ...bundle.manifest.defaults,
      retScaleFactor: dialogue.ret_scale_factor,
      genScaleFactor: dialogue.gen_scale_factor,
      imgAtReplyStart: false,
    };
    const reference = new GillModel({ ...bundle, manifest: { ...bundle.manifest, defaults } });
    const turn = await reference.chat({
      conversation,
      imageMode: 'auto',
      retrieveBias: 0,
      allowGeneration: true,
      allowRetrieval: true,
      seed: 1,
      retrieveCount: 1,
      search: async () => [],
      maxNewTokens: dialogue.num_words,
      temperature: 0,
    });
    const r = reference.tokenizer.imgIds.length;
    // The chat allows one [IMG] block; the reference fixture was decoded without that limit.
    const firstBlockEnd = dialogue.imgPosition === null ? dialogue.ids.length : dialogue.imgPosition + r;
    expect(turn.tokens.slice(0, firstBlockEnd)).toEqual(dialogue.ids.slice(0, firstBlockEnd));
  });
});
