import * as ort from 'onnxruntime-node';
import type { Bundle } from '../bundle.ts';
import { floatInput, floatOutput, inputType } from '../tensors.ts';

/**
 * The frozen LM on ONNX Runtime with a KV cache: embeddings in, last-position logits and final post-norm
 * hidden states out. One `LmSequence` is one growing sequence (a prompt, then decoded tokens). The cache
 * stays in the element type the graph declares (float16 halves its memory): each step's `present` tensors
 * are fed back as the next step's `past_key_values` unconverted.
 */

export async function embedTokens(bundle: Bundle, ids: readonly number[]): Promise<Float32Array> {
  if (ids.length === 0) return new Float32Array(0);
  const input = new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, ids.length]);
  const out = await bundle.sessions.lmEmbed.run({ input_ids: input });
  return floatOutput(out.inputs_embeds!);
}

export interface LmStep {
  /** Logits at the last fed position [V]. */
  logits: Float32Array;
  /** Final hidden states at every fed position [T, H]. */
  hidden: Float32Array;
}

export class LmSequence {
  private past: Record<string, ort.Tensor>;
  private length = 0;
  private readonly wantsPositions: boolean;

  constructor(private readonly bundle: Bundle) {
    const { numLayers, numHeads, headDim } = bundle.manifest.lm;
    const empty = [1, numHeads, 0, headDim];
    this.past = {};
    for (let i = 0; i < numLayers; i++) {
      for (const kv of ['key', 'value']) {
        const name = `past_key_values.${i}.${kv}`;
        this.past[name] =
          inputType(bundle.sessions.lm, name) === 'float16'
            ? new ort.Tensor('float16', new Uint16Array(0), empty)
            : new ort.Tensor('float32', new Float32Array(0), empty);
      }
    }
    this.wantsPositions = bundle.sessions.lm.inputNames.includes('position_ids');
  }

  /** Positions used so far (prompt plus fed tokens). */
  get positions(): number {
    return this.length;
  }

  /** A sequence that continues from this one's cache on its own (the cache tensors are never written to). */
  fork(): LmSequence {
    const copy = new LmSequence(this.bundle);
    copy.past = { ...this.past };
    copy.length = this.length;
    return copy;
  }

  /** Feeds embeddings [T, H] (flattened) and advances the cache. */
  async feed(embeds: Float32Array): Promise<LmStep> {
    const { hiddenSize, numLayers, vocabSize } = this.bundle.manifest.lm;
    const t = embeds.length / hiddenSize;
    if (!Number.isInteger(t) || t === 0)
      throw new RangeError(`embeddings of length ${embeds.length} are not [T, ${hiddenSize}]`);
    const total = this.length + t;
    const feeds: Record<string, ort.Tensor> = {
      ...this.past,
      inputs_embeds: floatInput(this.bundle.sessions.lm, 'inputs_embeds', embeds, [1, t, hiddenSize]),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(total).fill(1n), [1, total]),
    };
    if (this.wantsPositions) {
      const positions = new BigInt64Array(t);
      for (let i = 0; i < t; i++) positions[i] = BigInt(this.length + i);
      feeds.position_ids = new ort.Tensor('int64', positions, [1, t]);
    }
    const out = await this.bundle.sessions.lm.run(feeds);
    const next: Record<string, ort.Tensor> = {};
    for (let i = 0; i < numLayers; i++) {
      for (const kv of ['key', 'value'])
        next[`past_key_values.${i}.${kv}`] = out[`present.${i}.${kv}`] as ort.Tensor;
    }
    this.past = next;
    this.length = total;
    return {
      logits: floatOutput(out.logits!, (t - 1) * vocabSize, t * vocabSize).slice(),
      hidden: floatOutput(out.hidden_states!),
    };
  }
}
