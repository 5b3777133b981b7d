import { createHash } from 'node:crypto';
import sharp from 'sharp';
import type { Engine, JobContext, JobPayload, JobResult, ResultImage } from '../../src/jobs.ts';
import type { Store } from '../../src/store/types.ts';
import { JobGate } from './job-gate.ts';

/**
 * An engine double for the chat-platform tests: it answers from what it was given (the image hashes and
 * last text of a chat, a generated PNG with progress for imagine, the store's real vector search for
 * find, a bag-of-words embedding of the file name for index), so a test can check what reached it.
 */

const DIM = 16;

/** A bag-of-words vector: texts sharing words are near each other. */
export function embedText(text: string): Float32Array {
  const v = new Float32Array(DIM);
  for (const word of text
    .toLowerCase()
    .split(/[^a-z]+/)
    .filter(Boolean)) {
    const h = createHash('sha256').update(word).digest();
    v[h[0]! % DIM]! += 1;
  }
  const norm = Math.hypot(...v) || 1;
  return v.map((x) => x / norm);
}

/** Answers from its inputs, so tests can check what reached the engine. `hold` parks jobs until released. */
export class EchoEngine implements Engine {
  readonly payloads: JobPayload[] = [];
  private readonly gate = new JobGate();
  started = 0;

  constructor(
    private readonly store: Store,
    /** Diffusion steps an imagine job reports when the payload names none, and the time between them. */
    private readonly imagine: { steps: number; stepMs: number } = { steps: 4, stepMs: 150 },
  ) {}

  hold(): void {
    this.gate.hold();
  }

  release(): void {
    this.gate.release();
  }

  async run(payload: JobPayload, ctx: JobContext): Promise<JobResult> {
    this.payloads.push(payload);
    this.started++;
    await this.gate.pass(payload.kind);
    switch (payload.kind) {
      case 'chat': {
        const hashes = payload.context.flatMap((item) => (item.type === 'image' ? [item.hash] : []));
        const last = payload.context.filter((item) => item.type === 'text').at(-1);
        const said = last?.type === 'text' ? last.text : '';
        // "show me …" retrieves from the gallery, as the decision head choosing retrieval would.
        const wanted = /^show me (.+)/i.exec(said)?.[1];
        const found = wanted ? await this.search(payload, wanted, 4, payload.excludeImageIds) : [];
        return {
          kind: 'chat',
          text: `echo: ${said} | images: ${hashes.length ? hashes.join(',') : 'none'}`,
          images: found,
          decision: null,
          notes: [],
        };
      }
      case 'imagine': {
        const steps = payload.steps ?? this.imagine.steps;
        for (let step = 1; step <= steps; step++) {
          await new Promise((resolve) => setTimeout(resolve, this.imagine.stepMs));
          ctx.progress({ stage: 'generating', step, steps });
        }
        const png = await sharp({ create: { width: 32, height: 32, channels: 3, background: '#c03020' } })
          .png()
          .toBuffer();
        const hash = await this.store.blobs.put(png, 'image/png');
        return {
          kind: 'imagine',
          text: '',
          images: [{ kind: 'generated', hash, mime: 'image/png', width: 32, height: 32, score: 0 }],
          decision: null,
          notes: [],
          seed: payload.seed ?? 7,
        };
      }
      case 'find':
        return {
          kind: 'find',
          text: '',
          images: await this.search(payload, payload.query, payload.k, payload.excludeImageIds),
          decision: null,
          notes: [],
        };
      case 'index': {
        const image = await this.store.images.get(payload.imageId);
        await this.store.images.setEmbedding(payload.imageId, embedText(image?.title ?? ''));
        return { kind: 'index', text: '', images: [], decision: null, notes: [] };
      }
    }
  }

  async close(): Promise<void> {}

  /** The store's real search, from where the payload says the viewer is (its scope). */
  private async search(
    payload: Extract<JobPayload, { kind: 'chat' | 'find' }>,
    query: string,
    k: number,
    exclude: string[],
  ): Promise<ResultImage[]> {
    const community = await this.store.communities.ensure(payload.community);
    const found = await this.store.images.search(community.id, embedText(query), k, exclude, payload.scope);
    return found.map((image) => ({
      kind: 'retrieved' as const,
      hash: image.hash,
      mime: image.mime,
      width: image.width,
      height: image.height,
      score: image.score,
      source: {
        imageId: image.id,
        permalink: image.permalink,
        authorId: image.authorId,
        channelId: image.channelId,
        messageId: image.messageId,
      },
    }));
  }
}

export function png(color: string, size = 24): Promise<Buffer> {
  return sharp({ create: { width: size, height: size, channels: 3, background: color } })
    .png()
    .toBuffer();
}

export const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');
