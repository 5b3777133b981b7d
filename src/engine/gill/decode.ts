import type { Bundle } from '../bundle.ts';
import { embedTokens, type LmSequence } from './lm.ts';
import { createRng, pickToken } from './sampling.ts';
import type { GillTokenizer } from './tokenizer.ts';

/**
 * GILL's decoding loop (docs/gill-method.md §3 step 2-5) on a KV cache. Differences from the reference, on
 * purpose: every emitted token is fed forward, so [IMG0] produced on the last step still has hidden states;
 * decoding stops at EOS or at a newline after the first token (the reference decodes on and then cuts
 * there, with the same result); an [IMG0] is only allowed while the whole [IMG] block fits in the context.
 */

export interface DecodeOptions {
  maxNewTokens: number;
  temperature: number;
  topP: number;
  seed: number;
  retScaleFactor: number;
  genScaleFactor: number;
  /** How many [IMG] blocks may be produced (the reference's max_num_rets). */
  maxImages: number;
  /**
   * The manifest's `imgAtReplyStart`: [IMG0] is only weighed as the reply's first token, and a block is
   * read right after the prompt — where the paper's evaluation protocol reads it and where a bundle's
   * dialogue rows train it (`Q: … A:[IMG0…]`). The reply's text is decoded from the same prompt as a reply
   * without an image (an LM that never saw text after a block writes none), and the block is put first.
   */
  imgAtReplyStart?: boolean;
  /**
   * The manifest's `imgAfterText`: with imgAtReplyStart, the image is still decided at the reply's first
   * token, but its block is read after the reply's text, where the reference's replies put it.
   */
  imgAfterText?: boolean;
  /** The manifest's `imgScaleAbs`: false keeps the logit's sign when scaling (absent: the reference's abs). */
  imgScaleAbs?: boolean;
  /** Append an [IMG] block after the text when the model produced none (the user asked for an image). */
  forceImage: boolean;
  /**
   * With imgAtReplyStart: asked, when the reply ended without an image, whether it should end with one, from the
   * hidden state at the reply's last token (the bundle's reply-image head). A reply to a request worded in a way
   * the LM never read still reads like one ("here is a small green star."): the first token misses it, the
   * reply's own words do not.
   */
  imageAfterReply?: (hiddenLast: Float32Array) => Promise<boolean>;
  signal?: AbortSignal;
}

export interface DecodedImageBlock {
  /** Index of [IMG0] in `ids`. */
  position: number;
  /** Final hidden states at [IMG0..r-1], [r, H]. */
  hidden: Float32Array;
}

export interface DecodeResult {
  /** Generated ids, [IMG] blocks included, EOS and the stopping newline excluded. */
  ids: number[];
  images: DecodedImageBlock[];
  forcedImage: boolean;
  stop: 'eos' | 'newline' | 'max_tokens' | 'context';
}

/** Applies GILL's [IMG] logit rules in place; `allowImg0` false blocks [IMG0] as well. */
export function applyImgRules(
  logits: Float32Array,
  imgIds: readonly number[],
  allowImg0: boolean,
  options: DecodeOptions,
) {
  for (let j = 1; j < imgIds.length; j++) logits[imgIds[j]!] = Number.NEGATIVE_INFINITY;
  const img0 = imgIds[0]!;
  if (!allowImg0) {
    logits[img0] = Number.NEGATIVE_INFINITY;
    return;
  }
  logits[img0] = scaledImg0Logit(logits[img0]!, options);
}

/**
 * What a scale factor multiplies: |logit| as the reference does (a negative logit turns positive), or the
 * logit itself when the bundle keeps the sign (`imgScaleAbs` false).
 */
export function img0Magnitude(logit: number, imgScaleAbs: boolean | undefined): number {
  return imgScaleAbs === false ? logit : Math.abs(logit);
}

/** [IMG0]'s logit boosted by the scale factors, each only when above 1. */
function scaledImg0Logit(logit: number, options: DecodeOptions): number {
  let l = logit;
  if (options.retScaleFactor > 1) l = img0Magnitude(l, options.imgScaleAbs) * options.retScaleFactor;
  if (options.genScaleFactor > 1) l = img0Magnitude(l, options.imgScaleAbs) * options.genScaleFactor;
  return l;
}

export async function decode(
  bundle: Bundle,
  tokenizer: GillTokenizer,
  sequence: LmSequence,
  firstLogits: Float32Array,
  options: DecodeOptions,
): Promise<DecodeResult> {
  const { maxPositions, hiddenSize: H, eosId, newlineId } = bundle.manifest.lm;
  const imgIds = tokenizer.imgIds;
  const r = imgIds.length;
  const rng = createRng(options.seed);
  const ids: number[] = [];
  const images: DecodedImageBlock[] = [];
  let logits = firstLogits;
  let stop: DecodeResult['stop'] = 'max_tokens';
  let unfed: number | null = null;
  let forcedImage = false;
  /** The cache at the reply's start, when the image was decided there. */
  let atStart: LmSequence | null = null;

  if (options.imgAtReplyStart) {
    if (options.maxImages > 0 && sequence.positions + r <= maxPositions) {
      const scores = Float32Array.from(logits);
      applyImgRules(scores, imgIds, true, options);
      const rule = { temperature: options.temperature, topP: options.topP, rng: createRng(options.seed) };
      const chosen = pickToken(scores, rule) === imgIds[0];
      if (chosen || options.forceImage) {
        atStart = sequence.fork();
        forcedImage = !chosen;
      }
    }
  }
  const readBlock = async (from: LmSequence) =>
    (await from.feed(await embedTokens(bundle, [...imgIds]))).hidden.slice(0, r * H);
  if (atStart && !options.imgAfterText) images.push({ position: 0, hidden: await readBlock(atStart) });

  /** Hidden state of the last token fed: the reply's last token once decoding stops. */
  let lastHidden: Float32Array | null = null;
  const feed = async (tokens: number[]) => {
    const step = await sequence.feed(await embedTokens(bundle, tokens));
    logits = step.logits;
    lastHidden = step.hidden.slice((tokens.length - 1) * H, tokens.length * H);
    return step.hidden;
  };

  for (let i = 0; i < options.maxNewTokens; i++) {
    options.signal?.throwIfAborted();
    if (sequence.positions >= maxPositions) {
      stop = 'context';
      break;
    }
    const scores = Float32Array.from(logits);
    const roomForImage =
      !options.imgAtReplyStart && images.length < options.maxImages && sequence.positions + r <= maxPositions;
    applyImgRules(scores, imgIds, roomForImage, options);
    const token = pickToken(scores, { temperature: options.temperature, topP: options.topP, rng });
    if (token === eosId) {
      stop = 'eos';
      break;
    }
    if (token === newlineId && ids.length > 0) {
      stop = 'newline';
      break;
    }
    if (token === imgIds[0]) {
      const position = ids.length;
      ids.push(...imgIds);
      images.push({ position, hidden: (await feed([...imgIds])).slice(0, r * H) });
      continue;
    }
    ids.push(token);
    // The last token needs no forward pass: nothing reads its logits or hidden state.
    if (i < options.maxNewTokens - 1) await feed([token]);
    else unfed = token;
  }

  if (options.imgAtReplyStart) {
    if (atStart && options.imgAfterText) {
      // After the text when the block still fits; else where it was decided.
      if (sequence.positions + r + (unfed === null ? 0 : 1) <= maxPositions) {
        if (unfed !== null) await feed([unfed]);
        images.push({ position: ids.length, hidden: await readBlock(sequence) });
        ids.push(...imgIds);
      } else {
        images.push({ position: 0, hidden: await readBlock(atStart) });
        ids.unshift(...imgIds);
      }
    } else if (images.length) ids.unshift(...imgIds);
    else if (
      options.imageAfterReply &&
      options.maxImages > 0 &&
      ids.length > 0 &&
      unfed === null &&
      lastHidden !== null &&
      (stop === 'eos' || stop === 'newline') &&
      sequence.positions + r <= maxPositions &&
      (await options.imageAfterReply(lastHidden))
    ) {
      images.push({ position: ids.length, hidden: await readBlock(sequence) });
      ids.push(...imgIds);
    }
    return { ids, images, forcedImage, stop };
  }
  const needed = r + (unfed === null ? 0 : 1);
  if (options.forceImage && images.length === 0 && sequence.positions + needed <= maxPositions) {
    // The block follows the whole reply, so the reply's last token must be in the cache.
    if (unfed !== null) await feed([unfed]);
    const position = ids.length;
    ids.push(...imgIds);
    images.push({ position, hidden: (await feed([...imgIds])).slice(0, r * H) });
    forcedImage = true;
  }
  return { ids, images, forcedImage, stop };
}
