import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadBundle } from '../src/engine/bundle.ts';
import { GillModel } from '../src/engine/gill/model.ts';
import { GillEngine } from '../src/engine/gill-engine.ts';
import { createEngine } from '../src/engine/index.ts';
import type { JobContext } from '../src/jobs.ts';
import { type JobProgress, type JobResult, parsePayload, UserInputError } from '../src/jobs.ts';
import { createLogger } from '../src/log.ts';
import type { Store } from '../src/store/types.ts';
import { openEngineStore } from './support/engine-store.ts';
import { makeRandomBundle, torchAvailable } from './support/random-bundle.ts';

const torchUp = await torchAvailable();
function context(): JobContext & { events: JobProgress[] } {
  const events: JobProgress[] = [];
  return { events, progress: (p) => events.push(p), signal: new AbortController().signal };
}

const solid = (colour: string, size = 24) =>
  sharp({ create: { width: size, height: size, channels: 3, background: colour } })
    .png()
    .toBuffer();

describe.skipIf(!torchUp)('GillEngine on a random bundle and a real store', () => {
  let bundleDir: { dir: string; remove(): Promise<void> };
  let opened: Awaited<ReturnType<typeof openEngineStore>>;
  let store: Store;
  let engine: GillEngine;
  const here = { platform: 'cli' as const, externalId: 'engine-test' };
  const elsewhere = { platform: 'cli' as const, externalId: 'other-community' };
  const indexed: Record<string, string> = {};

  async function addImage(community: typeof here, name: string, bytes: Buffer): Promise<string> {
    const c = await store.communities.ensure(community);
    const hash = await store.blobs.put(bytes, 'image/png');
    const meta = await sharp(bytes).metadata();
    const record = await store.images.add(c.id, hash, {
      mime: 'image/png',
      width: meta.width ?? 0,
      height: meta.height ?? 0,
      channelId: 'C1',
      messageId: `M-${name}`,
      authorId: 'U1',
      permalink: `https://example.test/${name}`,
      title: name,
    });
    return record.id;
  }

  beforeAll(async () => {
    bundleDir = await makeRandomBundle(4);
    opened = await openEngineStore(bundleDir.dir);
    store = opened.store;
    engine = await createEngine(opened.config, store, createLogger('silent'));
    const colours = {
      red: '#f00',
      green: '#0f0',
      blue: '#00f',
      yellow: '#ff0',
      black: '#000',
      white: '#fff',
    };
    for (const [name, colour] of Object.entries(colours)) {
      indexed[name] = await addImage(here, name, await solid(colour));
      await engine.run(parsePayload({ kind: 'index', community: here, imageId: indexed[name] }), context());
    }
    const foreign = await addImage(elsewhere, 'foreign', await solid('#f0f'));
    await engine.run(parsePayload({ kind: 'index', community: elsewhere, imageId: foreign }), context());
  });
  afterAll(async () => {
    await engine?.close();
    await opened?.close();
    await bundleDir?.remove();
  });

  it('find returns exactly k images of the community, best first, with their source', async () => {
    const result = await engine.run(
      parsePayload({ kind: 'find', community: here, query: 'a red square', k: 4 }),
      context(),
    );
    expect(result.images).toHaveLength(4);
    const ids = result.images.map((i) => i.source?.imageId);
    expect(ids.every((id) => Object.values(indexed).includes(id!))).toBe(true);
    const scores = result.images.map((i) => i.score);
    expect([...scores].sort((a, b) => b - a)).toEqual(scores);
    expect(result.images[0]!.source?.permalink).toMatch(/^https:\/\/example\.test\//);

    const all = await engine.run(
      parsePayload({ kind: 'find', community: here, query: 'anything', k: 20 }),
      context(),
    );
    expect(all.images).toHaveLength(6);
    expect(all.notes.join(' ')).toMatch(/Only 6/);
    const excluded = await engine.run(
      parsePayload({
        kind: 'find',
        community: here,
        query: 'anything',
        k: 20,
        excludeImageIds: [indexed.red!],
      }),
      context(),
    );
    expect(excluded.images.map((i) => i.source?.imageId)).not.toContain(indexed.red);
  });

  it('find and chat retrieval search from the payload scope: a private image only in its own thread', async () => {
    const scoped = { platform: 'cli' as const, externalId: 'scoped' };
    const c = await store.communities.ensure(scoped);
    const hash = await store.blobs.put(await solid('#f80'), 'image/png');
    const secret = await store.images.add(c.id, hash, {
      mime: 'image/png',
      width: 24,
      height: 24,
      channelId: 'C1',
      threadId: 'T1',
      visibility: 'private',
      messageId: 'M-secret',
      authorId: 'U1',
      permalink: null,
      title: 'orange',
    });
    await engine.run(parsePayload({ kind: 'index', community: scoped, imageId: secret.id }), context());
    const ids = (result: JobResult) => result.images.map((i) => i.source?.imageId);
    const find = (scope?: { channelId: string; threadId?: string }) =>
      engine.run(parsePayload({ kind: 'find', community: scoped, query: 'orange', k: 4, scope }), context());
    const chat = (scope: { channelId: string; threadId?: string }) =>
      engine.run(
        parsePayload({
          kind: 'chat',
          community: scoped,
          context: [{ type: 'text', role: 'user', text: 'show me something orange' }],
          imageMode: 'retrieve',
          allowGeneration: false,
          scope,
        }),
        context(),
      );
    for (const elsewhere of [undefined, { channelId: 'C2' }, { channelId: 'C1' }]) {
      expect(ids(await find(elsewhere))).toEqual([]);
    }
    expect(ids(await chat({ channelId: 'C2' }))).toEqual([]);
    expect(ids(await find({ channelId: 'C1', threadId: 'T1' }))).toEqual([secret.id]);
    expect(ids(await chat({ channelId: 'C1', threadId: 'T1' }))).toEqual([secret.id]);
  });

  it('index stores the image retrieval embedding: searching with it finds the image at cosine 1', async () => {
    const c = await store.communities.ensure(here);
    const embedding = await engine.model.imageEmbedding(await solid('#00f'));
    const [best] = await store.images.search(c.id, embedding, 1);
    expect(best?.id).toBe(indexed.blue);
    expect(best?.score).toBeCloseTo(1, 4);
  });

  it('chat forced to retrieve returns one gallery image with its source', async () => {
    const hash = await store.blobs.put(await solid('#0a0', 40), 'image/png');
    const payload = parsePayload({
      kind: 'chat',
      community: here,
      context: [
        { type: 'text', role: 'user', text: 'my favourite colour is green' },
        { type: 'image', role: 'user', hash },
        { type: 'text', role: 'user', text: 'show me something in my favourite colour' },
      ],
      imageMode: 'retrieve',
      seed: 3,
    });
    const ctx = context();
    const result = await engine.run(payload, ctx);
    expect(result.kind).toBe('chat');
    expect(result.decision?.choice).toBe('retrieve');
    expect(result.images).toHaveLength(1);
    expect(result.images[0]!.kind).toBe('retrieved');
    expect(Object.values(indexed)).toContain(result.images[0]!.source?.imageId);
    expect(result.seed).toBe(3);
    expect(ctx.events.map((e) => e.stage)).toEqual(['thinking', 'retrieving']);
  });

  it("generates instead when its own choice to retrieve finds nothing above the bundle's similarity floor, unless the community leans toward retrieval", async () => {
    const defaults = engine.model.bundle.manifest.defaults;
    const retScale = defaults.retScaleFactor;
    defaults.retScaleFactor = 1e5; // the paper's evaluation trick: [IMG0] first, so there is a decision
    const chat = (text: string, floor: number, retrieveBias: number) => {
      defaults.minRetrieveSimilarity = floor;
      const payload = parsePayload({
        kind: 'chat',
        community: here,
        context: [{ type: 'text', role: 'user', text }],
        retrieveBias,
        seed: 4,
      });
      return engine.run(payload, context());
    };
    try {
      // A prompt whose retrieve the random decision head chooses by itself (no bias).
      const prompts = [
        'show me something green',
        'a red square',
        'the blue one',
        'find a star',
        'that picture',
        'hello there',
      ];
      let own: string | undefined;
      for (const text of prompts) {
        if ((await chat(text, -1, 0)).decision?.choice === 'retrieve') {
          own = text;
          break;
        }
      }
      expect(own, 'a prompt the head retrieves for on its own').toBeDefined();
      const above = await chat(own!, -1, 0);
      expect(above.images.map((i) => i.kind)).toEqual(['retrieved']);
      const below = await chat(own!, 1, 0);
      expect(below.decision?.choice).toBe('generate');
      expect(below.images.map((i) => i.kind)).toEqual(['generated']);
      expect(below.notes.join(' ')).toMatch(/not close enough \(similarity -?\d\.\d\d\)/);
      // A community leaning toward retrieval (a positive bias, set or learned) gets the closest image.
      const leaning = await chat(own!, 1, 10);
      expect(leaning.decision?.choice).toBe('retrieve');
      expect(leaning.images.map((i) => i.kind)).toEqual(['retrieved']);
    } finally {
      delete defaults.minRetrieveSimilarity;
      defaults.retScaleFactor = retScale;
    }
  });

  it("feeds the best gallery match's cosine, from the turn's one search, to a decision graph that takes it", async () => {
    // Seed 4 again: the same graphs as the engine's (so the same gallery embeddings) but decision.onnx, whose
    // retrieve-minus-generate margin gains 20 × the score.
    const source = await makeRandomBundle(4, { decisionInputs: ['hidden', 'retrieval_score'] });
    const bundle = await loadBundle(source.dir, { threads: 1 });
    const scored = new GillEngine(new GillModel(bundle), store, createLogger('silent'));
    const searches = vi.spyOn(store.images, 'search');
    const chat = async (community: typeof here) => {
      const ctx = context();
      const payload = parsePayload({
        kind: 'chat',
        community,
        context: [{ type: 'text', role: 'user', text: 'show me something green' }],
        imageMode: 'retrieve',
        seed: 4,
      });
      const result = await scored.run(payload, ctx);
      return { result, stages: ctx.events.map((e) => e.stage).filter((s) => s !== 'generating') };
    };
    const margin = (r: JobResult) => Math.log(r.decision!.pRetrieve / r.decision!.pGenerate);
    try {
      const gallery = await chat(here);
      expect(searches).toHaveBeenCalledTimes(1);
      expect(gallery.stages).toEqual(['thinking', 'retrieving']);
      expect(gallery.result.decision?.choice).toBe('retrieve');
      const best = gallery.result.images[0]!.score;
      expect(Math.abs(best)).toBeGreaterThan(0.01); // the score has a visible part to find

      searches.mockClear();
      const empty = await chat({ platform: 'cli', externalId: 'empty-gallery' });
      expect(searches).toHaveBeenCalledTimes(1);
      expect(empty.result.notes.join(' ')).toMatch(/Nothing in the gallery matched/);
      // Same prompt and [IMG0], so the margins differ by exactly the score's part: 20 × (best − 0).
      expect(margin(gallery.result) - margin(empty.result)).toBeCloseTo(20 * best, 2);
    } finally {
      searches.mockRestore();
      await bundle.close();
      await source.remove();
    }
  });

  it('chat forced to generate stores a PNG and reports each diffusion step', async () => {
    const payload = parsePayload({
      kind: 'chat',
      community: here,
      context: [{ type: 'text', role: 'user', text: 'draw a blue circle' }],
      imageMode: 'generate',
      seed: 9,
    });
    const ctx = context();
    const result = await engine.run(payload, ctx);
    expect(result.decision?.choice).toBe('generate');
    const [image] = result.images;
    expect(image?.kind).toBe('generated');
    const blob = await store.blobs.get(image!.hash);
    expect(blob?.mime).toBe('image/png');
    expect((await sharp(blob!.bytes).metadata()).width).toBe(image!.width);
    const steps = ctx.events.filter((e) => e.stage === 'generating');
    const total = engine.model.bundle.manifest.defaults.steps;
    expect(steps.map((e) => (e as { step: number }).step)).toEqual(
      Array.from({ length: total }, (_, i) => i + 1),
    );
    // Same seed, same image.
    const again = await engine.run(payload, context());
    expect(again.images[0]!.hash).toBe(image!.hash);
  });

  it('imagine runs the plain-prompt path and stores the PNG', async () => {
    const result = await engine.run(
      parsePayload({ kind: 'imagine', community: here, prompt: 'a red star', seed: 1, steps: 2 }),
      context(),
    );
    expect(result.images).toHaveLength(1);
    expect(result.decision).toBeNull();
    expect((await store.blobs.get(result.images[0]!.hash))?.mime).toBe('image/png');
  });

  it('trims 100k characters of context and caps images, saying so', async () => {
    const hashes = await Promise.all(
      Array.from({ length: 12 }, async (_, i) =>
        store.blobs.put(await solid(`rgb(${i * 20},0,0)`), 'image/png'),
      ),
    );
    const payload = parsePayload({
      kind: 'chat',
      community: here,
      context: [
        { type: 'text', role: 'user', text: 'blah '.repeat(20_000) },
        ...hashes.map((hash) => ({ type: 'image' as const, role: 'user' as const, hash })),
        { type: 'text', role: 'user', text: 'what now?' },
      ],
      seed: 1,
    });
    const result = await engine.run(payload, context());
    const notes = result.notes.join(' ');
    expect(notes).toMatch(/12 images; only the \d+ most recent/);
    expect(notes).toMatch(/only the most recent part was read/);
  });

  it('answers bad input with a typed error and keeps working', async () => {
    const failures: unknown[] = [];
    const record = async (job: Promise<JobResult>) =>
      failures.push(
        await job.then(
          () => null,
          (e: unknown) => e,
        ),
      );

    const bombHash = await store.blobs.put(Buffer.from('definitely not an image'), 'image/png');
    const c = await store.communities.ensure(here);
    const bad = await store.images.add(c.id, bombHash, {
      mime: 'image/png',
      width: 1,
      height: 1,
      channelId: 'C1',
      messageId: 'M-bad',
      authorId: null,
      permalink: null,
      title: 'bad',
    });
    await record(engine.run(parsePayload({ kind: 'index', community: here, imageId: bad.id }), context()));
    await record(engine.run(parsePayload({ kind: 'index', community: here, imageId: '999999' }), context()));
    await record(
      engine.run(parsePayload({ kind: 'index', community: elsewhere, imageId: indexed.red! }), context()),
    );
    await record(
      engine.run(
        parsePayload({ kind: 'chat', community: here, context: [{ type: 'text', role: 'user', text: '' }] }),
        context(),
      ),
    );
    expect(failures).toHaveLength(4);
    for (const failure of failures) expect(failure).toBeInstanceOf(UserInputError);
    expect((failures[0] as UserInputError).code).toBe('image_unsupported');

    const aborted = new AbortController();
    aborted.abort(new Error('cancelled'));
    await expect(
      engine.run(parsePayload({ kind: 'find', community: here, query: 'x' }), {
        progress: () => {},
        signal: aborted.signal,
      }),
    ).rejects.toThrow('cancelled');

    const fine = await engine.run(
      parsePayload({ kind: 'find', community: here, query: 'red', k: 2 }),
      context(),
    );
    expect(fine.images).toHaveLength(2);
  });
});
