import { type JobProgress, UserInputError } from '../../jobs.ts';
import type { Bundle } from '../bundle.ts';
import { encodePrompt, type GeneratedImage, generate, progressWithPreviews } from '../diffusion/pipeline.ts';
import type { SchedulerName } from '../diffusion/schedulers/index.ts';
import { imageToPixelValues } from '../images.ts';
import { type DecodeResult, decode } from './decode.ts';
import {
  cosine,
  decisionLogits,
  encodeImages,
  imageRetrievalEmbedding,
  mapperConditioning,
  replyImageLogit,
  softmax2,
  textRetrievalEmbedding,
  visualPrefix,
} from './heads.ts';
import { embedTokens, LmSequence } from './lm.ts';
import {
  type ConversationItem,
  dialoguePieces,
  type FittedPrompt,
  fitPrompt,
  type PromptSegment,
} from './prompt.ts';
import { GillTokenizer } from './tokenizer.ts';

/**
 * One GILL turn over a bundle (docs/gill-method.md §3): interleaved prompt → decoding with [IMG] handling →
 * retrieval embedding, decision, and either a gallery search or the GILLMapper → diffusion. The gallery is
 * reached through `search`, so this module knows nothing of the store.
 */

/** Images the LM looks at per turn at most; each costs an encoder run and k positions. */
export const MAX_CONTEXT_IMAGES = 8;

export interface Retrieved<S> {
  /** Cosine similarity between the query's and the image's retrieval embeddings. */
  score: number;
  item: S;
}

export interface ChatRequest<S> {
  conversation: ConversationItem<Uint8Array>[];
  imageMode: 'auto' | 'retrieve' | 'generate';
  /** Added to the decision head's retrieve logit. */
  retrieveBias: number;
  allowGeneration: boolean;
  allowRetrieval: boolean;
  seed: number;
  /** Gallery images returned when the turn retrieves. */
  retrieveCount: number;
  /** The community's gallery, best match first. */
  search: (embedding: Float32Array, k: number) => Promise<Retrieved<S>[]>;
  temperature?: number;
  topP?: number;
  maxNewTokens?: number;
  steps?: number;
  guidance?: number;
  scheduler?: SchedulerName;
  signal?: AbortSignal;
  onProgress?: (progress: JobProgress) => void;
}

/** What one diffusion run takes besides its conditioning. */
export type GenerateRequest = Pick<
  ChatRequest<unknown>,
  'seed' | 'steps' | 'guidance' | 'scheduler' | 'signal' | 'onProgress'
> & {
  /** Forming-image previews reported while denoising (each costs a VAE decode); default 4. */
  previews?: number;
};

export interface ChatTurn<S> {
  text: string;
  /** Decision head probabilities and the choice made (after forcing, bias and permissions). */
  decision: { choice: 'generate' | 'retrieve'; pGenerate: number; pRetrieve: number } | null;
  generated: (GeneratedImage & { score: number })[];
  retrieved: Retrieved<S>[];
  notes: string[];
  /** Generated token ids, [IMG] blocks included. */
  tokens: number[];
  /** Normalised retrieval embedding of the [IMG] block, when there was one. */
  retrievalEmbedding: Float32Array | null;
}

export class GillModel {
  readonly tokenizer: GillTokenizer;

  constructor(readonly bundle: Bundle) {
    this.tokenizer = new GillTokenizer(bundle.lmTokenizerJson, bundle.manifest.lm);
  }

  private get manifest() {
    return this.bundle.manifest;
  }

  /** What a person typed, typos repaired when the bundle ships a lexicon. */
  private repairUserText(text: string): string {
    return this.bundle.spelling ? this.bundle.spelling.repair(text) : text;
  }

  /** Encoder input of an image [3, S, S], decoded and resized per the manifest. */
  async pixels(bytes: Uint8Array): Promise<Float32Array> {
    return (await imageToPixelValues(bytes, this.manifest.vision)).pixels;
  }

  /** Encoder features [B, Dv] of encoder inputs, one [3, S, S] array per image. */
  async pooledFeatures(pixels: Float32Array[]): Promise<Float32Array> {
    const { imageSize } = this.manifest.vision;
    const plane = 3 * imageSize * imageSize;
    const batch = new Float32Array(pixels.length * plane);
    for (const [i, p] of pixels.entries()) batch.set(p, i * plane);
    return encodeImages(this.bundle, batch, pixels.length);
  }

  /** The normalised retrieval embedding of an image, as stored in the gallery index. */
  async imageEmbedding(bytes: Uint8Array): Promise<Float32Array> {
    return imageRetrievalEmbedding(this.bundle, await this.pooledFeatures([await this.pixels(bytes)]));
  }

  /**
   * The normalised retrieval embedding of a text query. The prompt is `<BOS>{query}[IMG0]…[IMG{r-1}]`,
   * the layout of GILL's retrieval training (§2.1), and the embedding is read at [IMG0]. A query longer
   * than the context keeps its beginning.
   */
  async queryEmbedding(query: string): Promise<{ embedding: Float32Array; truncated: boolean }> {
    const { maxPositions, hiddenSize } = this.manifest.lm;
    const r = this.tokenizer.imgIds.length;
    let ids = this.tokenizer.encodeText(this.repairUserText(query), { bos: true });
    const truncated = ids.length + r > maxPositions;
    if (truncated) ids = ids.slice(0, maxPositions - r);
    ids.push(...this.tokenizer.imgIds);
    const step = await new LmSequence(this.bundle).feed(await embedTokens(this.bundle, ids));
    const img0 = ids.length - r;
    const hidden = step.hidden.slice(img0 * hiddenSize, (img0 + 1) * hiddenSize);
    return { embedding: await textRetrievalEmbedding(this.bundle, hidden), truncated };
  }

  /** The prompt's input embeddings [T, H]: token embeddings and each image's visual prefix, in order. */
  async embedPrompt(segments: PromptSegment<Float32Array>[]): Promise<Float32Array> {
    const { hiddenSize } = this.manifest.lm;
    const k = this.manifest.gill.numVisualTokens;
    const images = segments.flatMap((s) => (s.type === 'image' ? [s.image] : []));
    const prefixes = images.length
      ? await visualPrefix(this.bundle, await this.pooledFeatures(images), images.length)
      : new Float32Array(0);
    const parts: Float32Array[] = [];
    let imageIndex = 0;
    for (const segment of segments) {
      if (segment.type === 'tokens') {
        parts.push(await embedTokens(this.bundle, segment.ids));
      } else {
        const size = k * hiddenSize;
        parts.push(prefixes.subarray(imageIndex * size, (imageIndex + 1) * size));
        imageIndex++;
      }
    }
    const total = parts.reduce((n, p) => n + p.length, 0);
    const out = new Float32Array(total);
    let offset = 0;
    for (const part of parts) {
      out.set(part, offset);
      offset += part.length;
    }
    return out;
  }

  /** Limits of one turn: new tokens, and what is left of the context for the prompt. */
  budget(maxNewTokens = this.manifest.defaults.maxNewTokens) {
    const { maxPositions } = this.manifest.lm;
    const r = this.tokenizer.imgIds.length;
    const k = this.manifest.gill.numVisualTokens;
    const newTokens = Math.max(1, Math.min(maxNewTokens, Math.floor(maxPositions / 2)));
    // Room for the reply, a forced [IMG] block after it, and the reply's last token fed before the block.
    const promptTokens = maxPositions - newTokens - r - 1;
    const maxImages = Math.min(MAX_CONTEXT_IMAGES, Math.floor(promptTokens / (2 * k)));
    return { newTokens, prompt: { maxTokens: promptTokens, maxImages, tokensPerImage: k } };
  }

  /**
   * Decodes the images the prompt can hold, newest first; an image that cannot be read is left out with a
   * note, so one bad picture in a thread does not block the turn. Older images beyond the budget stay
   * undecoded (null) and are dropped by the image cap.
   */
  private async decodeImages(
    conversation: ConversationItem<Uint8Array>[],
    maxImages: number,
    notes: string[],
  ): Promise<ConversationItem<Float32Array | null>[]> {
    const out: ConversationItem<Float32Array | null>[] = [];
    let decoded = 0;
    for (let i = conversation.length - 1; i >= 0; i--) {
      const item = conversation[i]!;
      if (item.content.type === 'text') {
        out.unshift({ role: item.role, content: item.content });
        continue;
      }
      if (decoded >= maxImages) {
        out.unshift({ role: item.role, content: { type: 'image', image: null } });
        continue;
      }
      try {
        const pixels = await this.pixels(item.content.image);
        out.unshift({ role: item.role, content: { type: 'image', image: pixels } });
        decoded++;
      } catch (error) {
        if (!(error instanceof UserInputError)) throw error;
        notes.unshift(`An image in the conversation was left out: ${error.message}`);
      }
    }
    return out;
  }

  async prepareChatPrompt(
    conversation: ConversationItem<Uint8Array>[],
    maxNewTokens?: number,
  ): Promise<FittedPrompt<Float32Array>> {
    const notes: string[] = [];
    const budget = this.budget(maxNewTokens).prompt;
    // A bundle trained only on dialogues whose answers are text reads its own earlier answers as text
    // (manifest defaults.ownImagesInContext false); people's images are always read.
    const read =
      this.manifest.defaults.ownImagesInContext === false
        ? conversation.filter((item) => item.role === 'user' || item.content.type === 'text')
        : conversation;
    const items = await this.decodeImages(read, budget.maxImages, notes);
    const hasContent = items.some((i) => i.content.type === 'image' || i.content.text.trim().length > 0);
    if (!hasContent)
      throw new UserInputError('There is nothing to answer: the message is empty.', 'empty_input');
    const pieces = dialoguePieces(items, this.manifest.defaults.dialogueTemplate, (text) =>
      this.repairUserText(text),
    );
    const fitted = fitPrompt(pieces, this.tokenizer, budget);
    // The cap keeps the newest maxImages images, exactly the decoded ones.
    const segments = fitted.segments.filter(
      (s): s is PromptSegment<Float32Array> => s.type === 'tokens' || s.image !== null,
    );
    return { ...fitted, segments, notes: [...notes, ...fitted.notes] };
  }

  async chat<S>(request: ChatRequest<S>): Promise<ChatTurn<S>> {
    const d = this.manifest.defaults;
    request.onProgress?.({ stage: 'thinking' });
    const budget = this.budget(request.maxNewTokens);
    const prompt = await this.prepareChatPrompt(request.conversation, request.maxNewTokens);
    const notes = [...prompt.notes];
    const wantsImage = request.imageMode !== 'auto' && (request.allowGeneration || request.allowRetrieval);

    const sequence = new LmSequence(this.bundle);
    const first = await sequence.feed(await this.embedPrompt(prompt.segments));
    const decoded: DecodeResult = await decode(this.bundle, this.tokenizer, sequence, first.logits, {
      maxNewTokens: budget.newTokens,
      temperature: request.temperature ?? d.temperature,
      topP: request.topP ?? d.topP,
      seed: request.seed,
      retScaleFactor: d.retScaleFactor,
      genScaleFactor: d.genScaleFactor,
      imgAtReplyStart: d.imgAtReplyStart ?? false,
      imgScaleAbs: d.imgScaleAbs ?? true,
      imgAfterText: d.imgAfterText ?? false,
      maxImages: 1,
      forceImage: wantsImage,
      imageAfterReply: this.bundle.sessions.replyImage
        ? async (hidden) => (await replyImageLogit(this.bundle, hidden)) > 0
        : undefined,
      signal: request.signal,
    });
    const text = this.tokenizer.decode(decoded.ids).trim();
    const turn: ChatTurn<S> = {
      text,
      decision: null,
      generated: [],
      retrieved: [],
      notes,
      tokens: decoded.ids,
      retrievalEmbedding: null,
    };
    const block = decoded.images[0];
    if (!block) return turn;

    const H = this.manifest.lm.hiddenSize;
    const img0 = block.hidden.subarray(0, H);
    const embedding = await textRetrievalEmbedding(this.bundle, img0);
    turn.retrievalEmbedding = embedding;
    // A decision graph that weighs the best gallery match needs the search first; a "retrieve" choice reuses
    // its results. Where retrieval is off there is no gallery to match: score 0.
    let found: Retrieved<S>[] | undefined;
    let retrievalScore: number | undefined;
    if (this.bundle.decisionUsesRetrievalScore) {
      if (request.allowRetrieval) found = await this.searchGallery(request, embedding);
      retrievalScore = found?.[0]?.score ?? 0;
    }
    const logits = await decisionLogits(this.bundle, img0, retrievalScore);
    const [pGenerate, pRetrieve] = softmax2([logits[0], logits[1] + request.retrieveBias]);
    let choice: 'generate' | 'retrieve' =
      request.imageMode === 'auto' ? (pRetrieve > pGenerate ? 'retrieve' : 'generate') : request.imageMode;
    if (choice === 'retrieve' && !request.allowRetrieval) {
      if (!request.allowGeneration) {
        notes.push('Images are turned off in this community.');
        return turn;
      }
      notes.push('Retrieval is turned off in this community, so the image was generated.');
      choice = 'generate';
    } else if (choice === 'generate' && !request.allowGeneration) {
      if (!request.allowRetrieval) {
        notes.push('Images are turned off in this community.');
        return turn;
      }
      notes.push('Image generation is turned off in this community, so an image was retrieved instead.');
      choice = 'retrieve';
    }

    if (choice === 'retrieve') {
      turn.retrieved = found ?? (await this.searchGallery(request, embedding));
      // The floor guards the model's own choice; a community leaning toward retrieval (its /gill bias or
      // what its feedback taught) gets the gallery's closest image.
      const floor = this.bundle.manifest.defaults.minRetrieveSimilarity;
      const best = turn.retrieved[0]?.score;
      if (
        request.imageMode === 'auto' &&
        request.allowGeneration &&
        request.retrieveBias <= 0 &&
        floor !== undefined &&
        best !== undefined &&
        best < floor
      ) {
        notes.push(
          `The closest gallery image was not close enough (similarity ${best.toFixed(2)}), so the image was generated.`,
        );
        turn.retrieved = [];
        choice = 'generate';
      } else if (turn.retrieved.length === 0) {
        if (request.allowGeneration) {
          notes.push('Nothing in the gallery matched, so the image was generated.');
          choice = 'generate';
        } else {
          notes.push('Nothing in the gallery matched.');
        }
      }
    }
    if (choice === 'generate') {
      const conditioning = await mapperConditioning(this.bundle, block.hidden);
      turn.generated = [await this.generateScored(conditioning, embedding, request)];
    }
    turn.decision = { choice, pGenerate, pRetrieve };
    return turn;
  }

  private searchGallery<S>(request: ChatRequest<S>, embedding: Float32Array): Promise<Retrieved<S>[]> {
    request.signal?.throwIfAborted();
    request.onProgress?.({ stage: 'retrieving' });
    return request.search(embedding, request.retrieveCount);
  }

  /**
   * The plain-prompt path (`imagine`, the paper's Stable Diffusion baseline): the diffusion text encoder on
   * the prompt, no LM. The worker and `gill imagine` both come here.
   */
  async imagine(prompt: string, options: GenerateRequest): Promise<GeneratedImage> {
    return this.generate(await encodePrompt(this.bundle, prompt), options);
  }

  /** Runs diffusion on a conditioning and scores the image against a retrieval embedding (§3 step 8). */
  private async generateScored(
    conditioning: Float32Array,
    embedding: Float32Array,
    options: GenerateRequest,
  ): Promise<GeneratedImage & { score: number }> {
    const image = await this.generate(conditioning, options);
    return { ...image, score: cosine(await this.imageEmbedding(image.png), embedding) };
  }

  private generate(conditioning: Float32Array, options: GenerateRequest): Promise<GeneratedImage> {
    return generate({
      bundle: this.bundle,
      conditioning,
      seed: options.seed,
      steps: options.steps,
      guidance: options.guidance,
      scheduler: options.scheduler,
      signal: options.signal,
      onStep: progressWithPreviews(this.bundle, (p) => options.onProgress?.(p), options.previews),
    });
  }
}
