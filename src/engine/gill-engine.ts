import { randomInt } from 'node:crypto';
import type { Engine, JobContext } from '../jobs.ts';
import { type JobPayload, type JobResult, type ResultImage, UserInputError } from '../jobs.ts';
import type { Logger } from '../log.ts';
import type { ScoredImage, Store, ViewerScope } from '../store/types.ts';
import type { SchedulerName } from './diffusion/schedulers/index.ts';
import type { GillModel, Retrieved } from './gill/model.ts';
import type { ConversationItem } from './gill/prompt.ts';

/**
 * The Engine over one GILL bundle: chat turns, plain-prompt `imagine`, gallery `find` and `index`.
 * Images come from and go to the store's blobs by hash; retrieval searches the community's gallery.
 * Every check on a job's input happens before or between graph runs, and ONNX Runtime sessions keep no
 * per-job state, so a job that fails leaves the engine ready for the next.
 */

type Payload<K extends JobPayload['kind']> = Extract<JobPayload, { kind: K }>;

export interface GillEngineOptions {
  /** Gallery images a chat turn returns when it retrieves. */
  retrieveCount?: number;
  /** Diffusion sampler for chat and imagine; the bundle's default when unset. */
  scheduler?: SchedulerName;
}

export class GillEngine implements Engine {
  constructor(
    readonly model: GillModel,
    private readonly store: Store,
    private readonly logger: Logger,
    private readonly options: GillEngineOptions = {},
  ) {}

  async run(payload: JobPayload, ctx: JobContext): Promise<JobResult> {
    ctx.signal.throwIfAborted();
    const started = performance.now();
    const result = await this.dispatch(payload, ctx);
    this.logger.debug({ kind: payload.kind, ms: Math.round(performance.now() - started) }, 'engine job done');
    return result;
  }

  private dispatch(payload: JobPayload, ctx: JobContext): Promise<JobResult> {
    switch (payload.kind) {
      case 'chat':
        return this.chat(payload, ctx);
      case 'imagine':
        return this.imagine(payload, ctx);
      case 'find':
        return this.find(payload, ctx);
      case 'index':
        return this.index(payload, ctx);
    }
  }

  async close(): Promise<void> {
    await this.model.bundle.close();
  }

  private async chat(payload: Payload<'chat'>, ctx: JobContext): Promise<JobResult> {
    const community = await this.store.communities.ensure(payload.community);
    const notes: string[] = [];
    const conversation: ConversationItem<Uint8Array>[] = [];
    for (const item of payload.context) {
      if (item.type === 'text') {
        conversation.push({ role: item.role, content: { type: 'text', text: item.text } });
        continue;
      }
      const blob = await this.store.blobs.get(item.hash);
      if (blob) conversation.push({ role: item.role, content: { type: 'image', image: blob.bytes } });
      else notes.push('An image in the conversation is no longer stored and was left out.');
    }
    const seed = payload.seed ?? randomSeed();
    const turn = await this.model.chat<ScoredImage>({
      conversation,
      imageMode: payload.imageMode,
      retrieveBias: payload.retrieveBias,
      allowGeneration: payload.allowGeneration,
      allowRetrieval: payload.allowRetrieval,
      seed,
      retrieveCount: this.options.retrieveCount ?? 1,
      scheduler: this.options.scheduler,
      search: (embedding, k) =>
        this.search(community.id, embedding, k, payload.excludeImageIds, payload.scope),
      signal: ctx.signal,
      onProgress: (p) => ctx.progress(p),
    });
    const images: ResultImage[] = [];
    if (turn.generated.length) ctx.progress({ stage: 'encoding' });
    for (const image of turn.generated) {
      const hash = await this.store.blobs.put(image.png, 'image/png');
      images.push({
        kind: 'generated',
        hash,
        mime: 'image/png',
        width: image.width,
        height: image.height,
        score: image.score,
      });
    }
    images.push(...turn.retrieved.map(retrievedImage));
    return {
      kind: 'chat',
      text: turn.text,
      images,
      decision: turn.decision,
      notes: [...notes, ...turn.notes],
      seed,
    };
  }

  /** The plain-prompt path: the diffusion text encoder on the prompt, no LM (the baseline, `--no-llm`). */
  private async imagine(payload: Payload<'imagine'>, ctx: JobContext): Promise<JobResult> {
    ctx.progress({ stage: 'thinking' });
    const seed = payload.seed ?? randomSeed();
    // No retrieval embedding exists on this path, so the image is not scored (0).
    const image = await this.model.imagine(payload.prompt, {
      seed,
      steps: payload.steps,
      guidance: payload.guidance,
      scheduler: this.options.scheduler,
      signal: ctx.signal,
      onProgress: (p) => ctx.progress(p),
    });
    ctx.progress({ stage: 'encoding' });
    const hash = await this.store.blobs.put(image.png, 'image/png');
    return {
      kind: 'imagine',
      text: '',
      images: [
        { kind: 'generated', hash, mime: 'image/png', width: image.width, height: image.height, score: 0 },
      ],
      decision: null,
      notes: [],
      seed,
    };
  }

  private async find(payload: Payload<'find'>, ctx: JobContext): Promise<JobResult> {
    const community = await this.store.communities.ensure(payload.community);
    ctx.progress({ stage: 'retrieving' });
    const { embedding, truncated } = await this.model.queryEmbedding(payload.query);
    ctx.signal.throwIfAborted();
    const found = await this.search(
      community.id,
      embedding,
      payload.k,
      payload.excludeImageIds,
      payload.scope,
    );
    const notes: string[] = [];
    if (truncated) notes.push('The query was longer than the model reads; only its beginning was used.');
    if (found.length === 0) notes.push('No indexed images in this community matched.');
    else if (found.length < payload.k) notes.push(`Only ${found.length} indexed images were found.`);
    return { kind: 'find', text: '', images: found.map(retrievedImage), decision: null, notes };
  }

  private async index(payload: Payload<'index'>, ctx: JobContext): Promise<JobResult> {
    const record = await this.store.images.get(payload.imageId);
    if (!record)
      throw new UserInputError(
        `Image ${payload.imageId} is not in the gallery (it may have been deleted).`,
        'not_found',
      );
    const community = await this.store.communities.ensure(payload.community);
    if (record.communityId !== community.id) {
      throw new UserInputError(`Image ${payload.imageId} belongs to another community.`, 'not_found');
    }
    const blob = await this.store.blobs.get(record.hash);
    if (!blob)
      throw new UserInputError(`The file of image ${payload.imageId} is no longer stored.`, 'not_found');
    ctx.signal.throwIfAborted();
    const embedding = await this.model.imageEmbedding(blob.bytes);
    await this.store.images.setEmbedding(record.id, embedding);
    return { kind: 'index', text: '', images: [], decision: null, notes: [] };
  }

  private async search(
    communityId: string,
    embedding: Float32Array,
    k: number,
    excludeIds: string[],
    scope: ViewerScope | undefined,
  ): Promise<Retrieved<ScoredImage>[]> {
    // The viewer's place decides which images they may see (docs: README, Security and reliability).
    const rows = await this.store.images.search(communityId, embedding, k, excludeIds, scope);
    return rows.map((row) => ({ score: row.score, item: row }));
  }
}

function retrievedImage({ score, item }: Retrieved<ScoredImage>): ResultImage {
  return {
    kind: 'retrieved',
    hash: item.hash,
    mime: item.mime,
    width: item.width,
    height: item.height,
    score,
    source: {
      imageId: item.id,
      permalink: item.permalink,
      authorId: item.authorId,
      channelId: item.channelId,
      messageId: item.messageId,
    },
  };
}

function randomSeed(): number {
  return randomInt(0, 2 ** 31 - 1);
}
