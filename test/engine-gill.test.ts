import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Bundle, loadBundle } from '../src/engine/bundle.ts';
import { applyImgRules, type DecodeOptions, decode } from '../src/engine/gill/decode.ts';
import { decisionLogits } from '../src/engine/gill/heads.ts';
import { embedTokens, LmSequence } from '../src/engine/gill/lm.ts';
import { type ChatRequest, GillModel } from '../src/engine/gill/model.ts';
import { type ConversationItem, dialoguePieces, fitPrompt } from '../src/engine/gill/prompt.ts';
import { argmax, createRng, pickToken } from '../src/engine/gill/sampling.ts';
import { type JobProgress, UserInputError } from '../src/jobs.ts';
import { makeRandomBundle, torchAvailable } from './support/random-bundle.ts';

describe('sampling', () => {
  it('is greedy at temperature 0', () => {
    const logits = Float32Array.from([0.1, 3, -2, 2.9]);
    expect(pickToken(logits, { temperature: 0, topP: 1, rng: createRng(1) })).toBe(1);
    expect(argmax(logits)).toBe(1);
  });

  it('reproduces draws from a seed and varies across seeds', () => {
    const logits = Float32Array.from({ length: 50 }, (_, i) => Math.sin(i));
    const draw = (seed: number) => {
      const rng = createRng(seed);
      return Array.from({ length: 20 }, () => pickToken(logits, { temperature: 1, topP: 1, rng }));
    };
    expect(draw(7)).toEqual(draw(7));
    expect(draw(7)).not.toEqual(draw(8));
  });

  it('keeps only the nucleus under top-p', () => {
    // Probabilities ≈ 0.64, 0.24, 0.09, 0.03: top_p 0.7 keeps the first two (the one crossing 0.7 included).
    const logits = Float32Array.from([3, 2, 1, 0]);
    const rng = createRng(3);
    const seen = new Set(
      Array.from({ length: 400 }, () => pickToken(logits, { temperature: 1, topP: 0.7, rng })),
    );
    expect([...seen].sort()).toEqual([0, 1]);
  });

  it('follows the softmax distribution', () => {
    const logits = Float32Array.from([Math.log(3), 0]);
    const rng = createRng(11);
    let zeros = 0;
    for (let i = 0; i < 4000; i++) if (pickToken(logits, { temperature: 1, topP: 1, rng }) === 0) zeros++;
    expect(zeros / 4000).toBeGreaterThan(0.72);
    expect(zeros / 4000).toBeLessThan(0.78);
  });
});

describe('[IMG] logit rules', () => {
  const options = { retScaleFactor: 1, genScaleFactor: 1 } as DecodeOptions;
  const img = [5, 6, 7];

  it('blocks [IMG1..] always and scales [IMG0] by abs × factor only above 1, or keeping its sign', () => {
    const logits = Float32Array.from([0, 0, 0, 0, 0, -2, 9, 9]);
    applyImgRules(logits, img, true, options);
    expect([...logits.slice(5)]).toEqual([-2, Number.NEGATIVE_INFINITY, Number.NEGATIVE_INFINITY]);
    const scaled = Float32Array.from([0, 0, 0, 0, 0, -2, 9, 9]);
    applyImgRules(scaled, img, true, { ...options, retScaleFactor: 1.5, genScaleFactor: 2 });
    expect(scaled[5]).toBeCloseTo(6);
    const signed = Float32Array.from([0, 0, 0, 0, 0, -2, 9, 9]);
    applyImgRules(signed, img, true, { ...options, retScaleFactor: 3, imgScaleAbs: false });
    expect(signed[5]).toBeCloseTo(-6);
    const blocked = Float32Array.from([0, 0, 0, 0, 0, 4, 9, 9]);
    applyImgRules(blocked, img, false, { ...options, retScaleFactor: 3 });
    expect(blocked[5]).toBe(Number.NEGATIVE_INFINITY);
  });
});

describe.skipIf(!(await torchAvailable()))('GILL on a random bundle', () => {
  let source: { dir: string; remove(): Promise<void> };
  let bundle: Bundle;
  let model: GillModel;
  let png: Buffer;

  beforeAll(async () => {
    source = await makeRandomBundle(2);
    bundle = await loadBundle(source.dir, { threads: 1 });
    model = new GillModel(bundle);
    png = await sharp({ create: { width: 30, height: 20, channels: 3, background: '#c03' } })
      .png()
      .toBuffer();
  });
  afterAll(async () => {
    await bundle?.close();
    await source?.remove();
  });

  const text = (t: string, role: 'user' | 'assistant' = 'user'): ConversationItem<Uint8Array> => ({
    role,
    content: { type: 'text', text: t },
  });
  const image = (bytes: Uint8Array, role: 'user' | 'assistant' = 'user'): ConversationItem<Uint8Array> => ({
    role,
    content: { type: 'image', image: bytes },
  });

  it('lays out a dialogue in the manifest template', () => {
    const pieces = dialoguePieces(
      [
        text('my favourite colour is green'),
        image(png),
        text('draw a star'),
        text('a star', 'assistant'),
        text('again'),
      ],
      'Q: {text}\nA:',
    );
    expect(pieces).toEqual([
      { type: 'text', text: 'Q: my favourite colour is green' },
      { type: 'image', image: png },
      { type: 'text', text: 'draw a star\nA: a star\nQ: again\nA:' },
    ]);
  });

  it('neutralises [IMG] strings typed by people', () => {
    const [piece] = dialoguePieces([text('look [IMG0][IMG1]')], '{text}');
    const ids = model.tokenizer.encodeText((piece as { text: string }).text, { bos: false, fromUser: false });
    expect(ids.some((id) => model.tokenizer.isImgToken(id))).toBe(false);
  });

  it('puts BOS before the first text segment only, after a leading image', () => {
    const fitted = fitPrompt(
      [
        { type: 'image', image: 'a' },
        { type: 'text', text: 'x' },
        { type: 'image', image: 'b' },
        { type: 'text', text: 'y' },
      ],
      model.tokenizer,
      { maxTokens: 100, maxImages: 8, tokensPerImage: 2 },
    );
    expect(
      fitted.segments.map((s) => (s.type === 'image' ? s.image : s.ids[0] === model.tokenizer.bosId)),
    ).toEqual(['a', true, 'b', false]);
    expect(fitted.length).toBe(2 + 2 + 2 + 1);
    expect(fitted.notes).toEqual([]);
  });

  it('keeps the most recent part of an over-long conversation and says so', () => {
    const long = `${'old words '.repeat(10_000)}the end`;
    expect(long.length).toBeGreaterThan(99_000);
    const budget = { maxTokens: 40, maxImages: 8, tokensPerImage: 2 };
    const fitted = fitPrompt([{ type: 'text', text: long }], model.tokenizer, budget);
    expect(fitted.length).toBe(40);
    const kept = fitted.segments.flatMap((s) => (s.type === 'tokens' ? s.ids : []));
    expect(kept[0]).toBe(model.tokenizer.bosId);
    expect(model.tokenizer.decode(kept)).toMatch(/the end$/);
    expect(fitted.notes.join(' ')).toMatch(/only the most recent part was read/);
  });

  it('caps images to the budget, keeping the most recent, and says so', () => {
    const pieces = Array.from({ length: 12 }, (_, i) => ({ type: 'image' as const, image: i }));
    const fitted = fitPrompt(pieces, model.tokenizer, { maxTokens: 100, maxImages: 3, tokensPerImage: 2 });
    expect(
      fitted.segments.filter((s) => s.type === 'image').map((s) => (s as { image: number }).image),
    ).toEqual([9, 10, 11]);
    expect(fitted.notes[0]).toMatch(/12 images; only the 3 most recent/);
  });

  it("leaves its own earlier images out of the prompt when the manifest says so, people's images stay", async () => {
    const conversation: ConversationItem<Uint8Array>[] = [
      { role: 'user', content: { type: 'image', image: png } },
      { role: 'user', content: { type: 'text', text: 'draw a red star' } },
      { role: 'assistant', content: { type: 'text', text: 'here is a red star.' } },
      { role: 'assistant', content: { type: 'image', image: png } },
      { role: 'user', content: { type: 'text', text: 'now make it blue' } },
    ];
    const images = (p: { segments: { type: string }[] }) =>
      p.segments.filter((s) => s.type === 'image').length;
    expect(images(await model.prepareChatPrompt(conversation))).toBe(2);
    const defaults = { ...bundle.manifest.defaults, ownImagesInContext: false };
    const textOnly = new GillModel({ ...bundle, manifest: { ...bundle.manifest, defaults } });
    const prompt = await textOnly.prepareChatPrompt(conversation);
    expect(images(prompt)).toBe(1);
    expect(
      model.tokenizer.decode(prompt.segments.flatMap((s) => (s.type === 'tokens' ? s.ids : []))),
    ).toContain('here is a red star.');
  });

  it('the KV cache gives the same hidden states and logits as one full pass', async () => {
    const ids = model.tokenizer.encodeText('a red star on the left', { bos: true });
    const H = bundle.manifest.lm.hiddenSize;
    const full = await new LmSequence(bundle).feed(await embedTokens(bundle, ids));
    const cached = new LmSequence(bundle);
    await cached.feed(await embedTokens(bundle, ids.slice(0, 3)));
    await cached.feed(await embedTokens(bundle, ids.slice(3, -1)));
    const last = await cached.feed(await embedTokens(bundle, ids.slice(-1)));
    expect(cached.positions).toBe(ids.length);
    const fullLast = full.hidden.slice((ids.length - 1) * H);
    for (let i = 0; i < H; i++) expect(last.hidden[i]).toBeCloseTo(fullLast[i]!, 4);
    for (let i = 0; i < full.logits.length; i += 17) expect(last.logits[i]).toBeCloseTo(full.logits[i]!, 3);
  });

  const decodeOptions = (o: Partial<DecodeOptions>): DecodeOptions => ({
    maxNewTokens: 8,
    temperature: 0,
    topP: 1,
    seed: 1,
    retScaleFactor: 1,
    genScaleFactor: 1,
    maxImages: 1,
    forceImage: false,
    ...o,
  });

  async function decodeFrom(prompt: string, options: Partial<DecodeOptions>) {
    const seq = new LmSequence(bundle);
    const first = await seq.feed(
      await embedTokens(bundle, model.tokenizer.encodeText(prompt, { bos: true })),
    );
    return decode(bundle, model.tokenizer, seq, first.logits, decodeOptions(options));
  }

  /** The block's hidden states equal a plain forward pass of `ids` followed by [IMG0..r-1]. */
  async function expectBlockReadAfter(ids: number[], hidden: Float32Array) {
    const r = model.tokenizer.imgIds.length;
    const all = [...ids, ...model.tokenizer.imgIds];
    const direct = await new LmSequence(bundle).feed(await embedTokens(bundle, all));
    const H = bundle.manifest.lm.hiddenSize;
    const expected = direct.hidden.slice((all.length - r) * H);
    for (let i = 0; i < r * H; i += 7) expect(hidden[i]).toBeCloseTo(expected[i]!, 4);
  }

  it('with imgAtReplyStart, reads the block right after the prompt and decodes the text as without it', async () => {
    const prompt = 'a picture of a cat';
    const r = model.tokenizer.imgIds.length;
    const withImage = await decodeFrom(prompt, {
      genScaleFactor: 1e5,
      imgAtReplyStart: true,
      maxNewTokens: 6,
    });
    const without = await decodeFrom(prompt, { imgAtReplyStart: true, maxImages: 0, maxNewTokens: 6 });
    expect(without.images).toEqual([]);
    expect(withImage.ids).toEqual([...model.tokenizer.imgIds, ...without.ids]);
    expect(withImage.images).toHaveLength(1);
    expect(withImage.images[0]!.position).toBe(0);
    expect(withImage.forcedImage).toBe(false);
    await expectBlockReadAfter(
      [...model.tokenizer.encodeText(prompt, { bos: true })],
      withImage.images[0]!.hidden,
    );
    // [IMG0] is never weighed after the first token, however large the factor.
    expect(withImage.ids.slice(r).some((id) => model.tokenizer.isImgToken(id))).toBe(false);
  });

  it('with imgAfterText, decides at the first token and reads the block after the reply text', async () => {
    const prompt = 'a picture of a cat';
    const after = await decodeFrom(prompt, {
      genScaleFactor: 1e5,
      imgAtReplyStart: true,
      imgAfterText: true,
      maxNewTokens: 6,
    });
    const without = await decodeFrom(prompt, { imgAtReplyStart: true, maxImages: 0, maxNewTokens: 6 });
    expect(after.ids).toEqual([...without.ids, ...model.tokenizer.imgIds]);
    expect(after.images).toHaveLength(1);
    expect(after.images[0]!.position).toBe(without.ids.length);
    await expectBlockReadAfter(
      [...model.tokenizer.encodeText(prompt, { bos: true }), ...without.ids],
      after.images[0]!.hidden,
    );
  });

  it('forces [IMG1..] after [IMG0] and returns the hidden states at the block', async () => {
    // A huge gen scale factor makes [IMG0] the first token, as GILL's evaluation scripts do.
    const result = await decodeFrom('a picture of a cat', { genScaleFactor: 1e5, maxNewTokens: 4 });
    const r = model.tokenizer.imgIds.length;
    expect(result.ids.slice(0, r)).toEqual(model.tokenizer.imgIds);
    expect(result.images).toHaveLength(1);
    expect(result.images[0]!.position).toBe(0);
    expect(result.images[0]!.hidden.length).toBe(r * bundle.manifest.lm.hiddenSize);
    // Only one block is allowed, and no stray [IMG1..] token is ever produced on its own.
    const imgCount = result.ids.filter((id) => model.tokenizer.isImgToken(id)).length;
    expect(imgCount).toBe(r);
  });

  it('has hidden states for an [IMG0] produced on the last step', async () => {
    const result = await decodeFrom('a cat', { genScaleFactor: 1e5, maxNewTokens: 1 });
    expect(result.images).toHaveLength(1);
    expect(result.images[0]!.hidden.some((v) => v !== 0)).toBe(true);
  });

  it('appends a block after the reply when an image is asked for and none came', async () => {
    const plain = await decodeFrom('hello', { maxNewTokens: 5 });
    expect(plain.images).toHaveLength(0);
    const forced = await decodeFrom('hello', { maxNewTokens: 5, forceImage: true });
    expect(forced.forcedImage).toBe(true);
    expect(forced.ids.slice(0, plain.ids.length)).toEqual(plain.ids);
    expect(forced.images[0]!.position).toBe(plain.ids.length);
  });

  it('reproduces a sampled reply from its seed', async () => {
    const a = await decodeFrom('once there was', { temperature: 1, topP: 0.95, seed: 42 });
    const b = await decodeFrom('once there was', { temperature: 1, topP: 0.95, seed: 42 });
    expect(a.ids).toEqual(b.ids);
  });

  it('runs a whole turn: decision with bias, retrieval count, generation', async () => {
    const conversation = [text('my favourite colour is green'), image(png), text('draw a star')];
    const search = async (_e: Float32Array, k: number) =>
      Array.from({ length: k }, (_, i) => ({ score: 1 - i / 10, item: `img${i}` }));
    const base = {
      conversation,
      allowGeneration: true,
      allowRetrieval: true,
      seed: 5,
      retrieveCount: 3,
      search,
    };
    // A random LM would rarely emit [IMG0]; a huge gen scale factor makes it the first token.
    const m = bundle.manifest;
    const eager = new GillModel({
      ...bundle,
      manifest: { ...m, defaults: { ...m.defaults, genScaleFactor: 1e5 } },
    });
    const retrieved = await eager.chat({ ...base, imageMode: 'auto', retrieveBias: 10 });
    expect(retrieved.decision?.choice).toBe('retrieve');
    expect(retrieved.decision!.pRetrieve).toBeGreaterThan(0.99);
    expect(retrieved.retrieved.map((r) => r.item)).toEqual(['img0', 'img1', 'img2']);
    expect(retrieved.generated).toHaveLength(0);
    // The text after the [IMG] block is kept.
    const r = model.tokenizer.imgIds.length;
    expect(retrieved.tokens.slice(0, r)).toEqual(model.tokenizer.imgIds);
    expect(retrieved.tokens.length).toBeGreaterThan(r + 1);
    expect(retrieved.text).toBe(model.tokenizer.decode(retrieved.tokens.slice(r)).trim());
    expect(model.tokenizer.decode(retrieved.tokens.slice(r)).length).toBeGreaterThan(0);

    const generated = await eager.chat({ ...base, imageMode: 'auto', retrieveBias: -10 });
    expect(generated.decision?.choice).toBe('generate');
    expect(generated.generated).toHaveLength(1);
    const meta = await sharp(generated.generated[0]!.png).metadata();
    expect([meta.format, meta.width]).toEqual(['png', bundle.manifest.diffusion.imageSize]);
    expect(Math.abs(generated.generated[0]!.score)).toBeLessThanOrEqual(1);
    // The bias moves the probabilities, the text does not change.
    expect(generated.text).toBe(retrieved.text);

    const forced = await eager.chat({
      ...base,
      imageMode: 'generate',
      retrieveBias: 10,
      allowGeneration: true,
    });
    expect(forced.decision?.choice).toBe('generate');
    const noRetrieval = await eager.chat({
      ...base,
      imageMode: 'retrieve',
      retrieveBias: 0,
      allowRetrieval: false,
    });
    expect(noRetrieval.decision?.choice).toBe('generate');
    expect(noRetrieval.notes.join(' ')).toMatch(/Retrieval is turned off/);
    const onlyImage = await eager.chat({ ...base, imageMode: 'auto', retrieveBias: 10, maxNewTokens: 1 });
    expect(onlyImage.tokens).toEqual(model.tokenizer.imgIds);
    expect(onlyImage.text).toBe('');
    expect(onlyImage.retrieved).toHaveLength(3);
    const emptyGallery = await eager.chat({
      ...base,
      imageMode: 'retrieve',
      retrieveBias: 0,
      search: async () => [],
    });
    expect(emptyGallery.decision?.choice).toBe('generate');
    expect(emptyGallery.notes.join(' ')).toMatch(/Nothing in the gallery matched/);
  });

  it('refuses an empty conversation and skips an unreadable image with a note', async () => {
    const search = async () => [];
    const base = { imageMode: 'auto' as const, retrieveBias: 0, allowGeneration: true, allowRetrieval: true };
    await expect(
      model.chat({ ...base, conversation: [text('   ')], seed: 1, retrieveCount: 1, search }),
    ).rejects.toBeInstanceOf(UserInputError);
    const turn = await model.chat({
      ...base,
      conversation: [image(Buffer.from('garbage')), text('hello')],
      seed: 1,
      retrieveCount: 1,
      search,
    });
    expect(turn.notes.join(' ')).toMatch(/An image in the conversation was left out/);
  });

  it('embeds queries and images as unit vectors of the retrieval size', async () => {
    const { embedding, truncated } = await model.queryEmbedding('a red circle');
    expect(truncated).toBe(false);
    const norm = (v: Float32Array) => Math.hypot(...v);
    expect(embedding.length).toBe(bundle.manifest.gill.retrievalDim);
    expect(norm(embedding)).toBeCloseTo(1, 5);
    expect(norm(await model.imageEmbedding(png))).toBeCloseTo(1, 5);
    expect((await model.queryEmbedding('word '.repeat(500))).truncated).toBe(true);
  });

  describe('with a decision graph that also takes the retrieval score', () => {
    // The same seed as the outer bundle: every graph is the same but decision.onnx, whose hidden-state part
    // is the same Linear, plus 20 × (score − 0.5) on the retrieve-minus-generate margin.
    let scoredSource: { dir: string; remove(): Promise<void> };
    let scored: Bundle;

    beforeAll(async () => {
      scoredSource = await makeRandomBundle(2, { decisionInputs: ['hidden', 'retrieval_score'] });
      scored = await loadBundle(scoredSource.dir, { threads: 1 });
    });
    afterAll(async () => {
      await scored?.close();
      await scoredSource?.remove();
    });

    /** A model that always emits [IMG0] first, so every turn has a decision. */
    const eager = (b: Bundle) =>
      new GillModel({
        ...b,
        manifest: { ...b.manifest, defaults: { ...b.manifest.defaults, genScaleFactor: 1e5 } },
      });

    /** A turn whose gallery answers with `scores` (best first), counting searches and progress stages. */
    async function turn(b: Bundle, scores: number[], options: Partial<ChatRequest<string>> = {}) {
      const log: string[] = [];
      const result = await eager(b).chat<string>({
        conversation: [text('draw a star')],
        imageMode: 'auto',
        retrieveBias: 0,
        allowGeneration: true,
        allowRetrieval: true,
        seed: 5,
        retrieveCount: 2,
        search: async (_e, k) => {
          log.push('search');
          return scores.slice(0, k).map((score, i) => ({ score, item: `img${i}` }));
        },
        onProgress: (p: JobProgress) => {
          if (p.stage !== 'generating') log.push(p.stage);
        },
        ...options,
      });
      return { ...result, log, searches: log.filter((e) => e === 'search').length };
    }

    it('feeds the score beside the hidden state, and refuses to run without one', async () => {
      const hidden = Float32Array.from({ length: scored.manifest.lm.hiddenSize }, (_, i) => Math.sin(i));
      const margin = ([g, r]: [number, number]) => r - g;
      const plain = margin(await decisionLogits(bundle, hidden));
      expect(margin(await decisionLogits(scored, hidden, 0.5))).toBeCloseTo(plain, 4);
      expect(margin(await decisionLogits(scored, hidden, 0.9))).toBeCloseTo(plain + 8, 3);
      expect(margin(await decisionLogits(scored, hidden, 0))).toBeCloseTo(plain - 10, 3);
      await expect(decisionLogits(scored, hidden)).rejects.toThrow(
        /takes retrieval_score, and none was given/,
      );
    });

    it('searches before deciding, once, and a near gallery match tips the decision to retrieve', async () => {
      const near = await turn(scored, [0.9, 0.8]);
      expect(near.decision?.choice).toBe('retrieve');
      expect(near.searches).toBe(1);
      expect(near.log).toEqual(['thinking', 'retrieving', 'search']);
      expect(near.retrieved).toEqual([
        { score: 0.9, item: 'img0' },
        { score: 0.8, item: 'img1' },
      ]);
      expect(near.generated).toHaveLength(0);

      const unrelated = await turn(scored, [0.1, 0.05]);
      expect(unrelated.decision?.choice).toBe('generate');
      expect(unrelated.searches).toBe(1);
      expect(unrelated.retrieved).toHaveLength(0);
      expect(unrelated.generated).toHaveLength(1);
      // Only the score differs between the two turns: 20 × (0.9 − 0.1) on the margin.
      const margin = (t: typeof near) => Math.log(t.decision!.pRetrieve / t.decision!.pGenerate);
      expect(margin(near) - margin(unrelated)).toBeCloseTo(16, 2);
      expect(near.text).toBe(unrelated.text);
    });

    it('scores an empty gallery, and a community without retrieval, as 0', async () => {
      const empty = await turn(scored, []);
      expect(empty.searches).toBe(1);
      expect(empty.decision?.choice).toBe('generate');
      const off = await turn(scored, [0.9], { allowRetrieval: false });
      expect(off.searches).toBe(0);
      expect(off.log).not.toContain('retrieving');
      expect(off.decision?.choice).toBe('generate');
      expect(off.decision!.pRetrieve).toBeCloseTo(empty.decision!.pRetrieve, 6);
      const near = await turn(scored, [0.9]);
      expect(near.decision!.pRetrieve).toBeGreaterThan(empty.decision!.pRetrieve);
    });

    it('keeps forced modes, permissions and the similarity floor', async () => {
      const forced = await turn(scored, [0.1], { imageMode: 'retrieve' });
      expect(forced.decision?.choice).toBe('retrieve');
      expect(forced.searches).toBe(1);
      expect(forced.retrieved.map((r) => r.item)).toEqual(['img0']);

      const noGeneration = await turn(scored, [0.1], { allowGeneration: false });
      expect(noGeneration.decision?.choice).toBe('retrieve');
      expect(noGeneration.searches).toBe(1);
      expect(noGeneration.notes.join(' ')).toMatch(/Image generation is turned off/);

      const floored = await turn(
        {
          ...scored,
          manifest: {
            ...scored.manifest,
            defaults: { ...scored.manifest.defaults, minRetrieveSimilarity: 0.95 },
          },
        },
        [0.9],
      );
      expect(floored.searches).toBe(1);
      expect(floored.decision?.choice).toBe('generate');
      expect(floored.notes.join(' ')).toMatch(/not close enough \(similarity 0\.90\)/);
    });

    it('a single-input decision graph searches only after choosing to retrieve', async () => {
      const generated = await turn(bundle, [0.9], { retrieveBias: -10 });
      expect(generated.decision?.choice).toBe('generate');
      expect(generated.searches).toBe(0);
      const retrieved = await turn(bundle, [0.9], { retrieveBias: 10 });
      expect(retrieved.decision?.choice).toBe('retrieve');
      expect(retrieved.searches).toBe(1);
      // Without the score, the gallery does not move the decision.
      const unrelated = await turn(bundle, [0.1], { retrieveBias: 10 });
      expect(unrelated.decision!.pRetrieve).toBe(retrieved.decision!.pRetrieve);
    });
  });
});
