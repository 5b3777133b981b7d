import type * as ort from 'onnxruntime-node';
import type { Bundle } from '../bundle.ts';
import { floatInput, floatOutput } from '../tensors.ts';
import { embedTokens } from './lm.ts';

/**
 * The GILL heads (docs/gill-method.md §1.3, §1.4, §1.6, §1.7): image encoder and visual prefix, the two retrieval
 * projections, the GILLMapper and the decision head. Inputs and outputs are flat Float32Arrays.
 */

/** Runs a head on float inputs (name → values and dims) and returns one float output. */
async function runOne(
  session: ort.InferenceSession,
  inputs: Record<string, [Float32Array, number[]]>,
  output: string,
): Promise<Float32Array> {
  const feeds = Object.fromEntries(
    Object.entries(inputs).map(([name, [values, dims]]) => [name, floatInput(session, name, values, dims)]),
  );
  const out = await session.run(feeds);
  return floatOutput(out[output]!);
}

/** Pooled image features [B, Dv] from encoder inputs [B, 3, S, S]. */
export function encodeImages(bundle: Bundle, pixels: Float32Array, count: number): Promise<Float32Array> {
  const s = bundle.manifest.vision.imageSize;
  return runOne(bundle.sessions.imageEncoder, { pixel_values: [pixels, [count, 3, s, s]] }, 'pooler_output');
}

/** Visual prefix tokens [B, k, H]: what an image becomes inside the LM's input. */
export function visualPrefix(bundle: Bundle, pooled: Float32Array, count: number): Promise<Float32Array> {
  const dims = [count, bundle.manifest.vision.pooledSize];
  return runOne(bundle.sessions.visualPrefix, { pooled: [pooled, dims] }, 'prefix');
}

export function normalise(v: Float32Array): Float32Array {
  let sum = 0;
  for (const x of v) sum += x * x;
  const norm = Math.sqrt(sum);
  if (!(norm > 0)) throw new RangeError('cannot normalise a zero vector');
  return v.map((x) => x / norm);
}

export function cosine(a: Float32Array, b: Float32Array): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!;
    na += a[i]! * a[i]!;
    nb += b[i]! * b[i]!;
  }
  return dot / Math.sqrt(na * nb);
}

/** Normalised image retrieval embedding [R] from one pooled feature [Dv]. */
export async function imageRetrievalEmbedding(bundle: Bundle, pooled: Float32Array): Promise<Float32Array> {
  const dims = [1, bundle.manifest.vision.pooledSize];
  return normalise(await runOne(bundle.sessions.imageRetrieval, { pooled: [pooled, dims] }, 'embedding'));
}

/** Normalised text retrieval embedding [R] from the hidden state at [IMG0] [H]. */
export async function textRetrievalEmbedding(
  bundle: Bundle,
  hiddenImg0: Float32Array,
): Promise<Float32Array> {
  const dims = [1, bundle.manifest.lm.hiddenSize];
  return normalise(await runOne(bundle.sessions.textRetrieval, { hidden: [hiddenImg0, dims] }, 'embedding'));
}

/**
 * The reply-image head (the manifest's optional `gill.replyImage`): from the hidden state at the last token of a
 * reply the LM wrote without an [IMG] block, the logit that the reply should end with one.
 */
export async function replyImageLogit(bundle: Bundle, hiddenLast: Float32Array): Promise<number> {
  const session = bundle.sessions.replyImage;
  if (!session) throw new Error('the bundle has no reply-image head (gill.replyImage)');
  return (await runOne(session, { hidden: [hiddenLast, [1, bundle.manifest.lm.hiddenSize]] }, 'logit'))[0]!;
}

/**
 * Decision head logits [generate, retrieve] from the hidden state at [IMG0], and, for a graph that takes it
 * (`bundle.decisionUsesRetrievalScore`), the cosine of the best gallery match for that [IMG0].
 */
export async function decisionLogits(
  bundle: Bundle,
  hiddenImg0: Float32Array,
  retrievalScore?: number,
): Promise<[number, number]> {
  const inputs: Record<string, [Float32Array, number[]]> = {
    hidden: [hiddenImg0, [1, bundle.manifest.lm.hiddenSize]],
  };
  if (bundle.decisionUsesRetrievalScore) {
    if (retrievalScore === undefined)
      throw new Error(
        `the decision graph ${bundle.manifest.gill.decision} takes retrieval_score, and none was given`,
      );
    inputs.retrieval_score = [Float32Array.of(retrievalScore), [1, 1]];
  }
  const logits = await runOne(bundle.sessions.decision, inputs, 'logits');
  return [logits[0]!, logits[1]!];
}

/**
 * GILLMapper: hidden states at [IMG0..r-1] [r, H] plus the [IMG] input embeddings (the residual of
 * §1.6) → diffusion conditioning [L, Dc].
 */
export async function mapperConditioning(bundle: Bundle, hiddenImg: Float32Array): Promise<Float32Array> {
  const { hiddenSize, imgTokenIds } = bundle.manifest.lm;
  const r = imgTokenIds.length;
  const tokenEmbeds = await embedTokens(bundle, imgTokenIds);
  return runOne(
    bundle.sessions.mapper,
    { hidden: [hiddenImg, [1, r, hiddenSize]], token_embeds: [tokenEmbeds, [1, r, hiddenSize]] },
    'cond',
  );
}

export function softmax2([a, b]: [number, number]): [number, number] {
  const m = Math.max(a, b);
  const ea = Math.exp(a - m);
  const eb = Math.exp(b - m);
  return [ea / (ea + eb), eb / (ea + eb)];
}
