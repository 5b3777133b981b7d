/**
 * Next-token choice as GILL's generate() makes it (docs/gill-method.md §3, step 2): greedy at temperature 0,
 * otherwise temperature then top-p (nucleus) filtering, keeping the first token that crosses the
 * threshold, then a draw. Draws come from a seeded PRNG so a seed reproduces a reply.
 */

/** mulberry32: a small, fast 32-bit PRNG; returns uniforms in [0, 1). */
export function createRng(seed: number): () => number {
  if (!Number.isSafeInteger(seed)) throw new RangeError(`the seed must be an integer, got ${seed}`);
  let state = (seed >>> 0) ^ 0x6d2b79f5;
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface SamplingOptions {
  temperature: number;
  topP: number;
  rng: () => number;
}

export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  let bestValue = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i]!;
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}

export function pickToken(logits: Float32Array, options: SamplingOptions): number {
  if (options.temperature <= 0) return argmax(logits);
  const n = logits.length;
  const scaled = new Float64Array(n);
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < n; i++) {
    scaled[i] = logits[i]! / options.temperature;
    if (scaled[i]! > max) max = scaled[i]!;
  }
  let total = 0;
  for (let i = 0; i < n; i++) {
    scaled[i] = Math.exp(scaled[i]! - max);
    total += scaled[i]!;
  }
  // Sort candidates by probability and keep the smallest prefix whose mass reaches top_p
  // (the token that crosses the threshold is kept, as in the reference).
  const order = Array.from({ length: n }, (_, i) => i).filter((i) => scaled[i]! > 0);
  order.sort((a, b) => scaled[b]! - scaled[a]!);
  let kept = order.length;
  if (options.topP < 1) {
    let mass = 0;
    for (let j = 0; j < order.length; j++) {
      mass += scaled[order[j]!]! / total;
      if (mass >= options.topP) {
        kept = j + 1;
        break;
      }
    }
  }
  let keptMass = 0;
  for (let j = 0; j < kept; j++) keptMass += scaled[order[j]!]!;
  let r = options.rng() * keptMass;
  for (let j = 0; j < kept; j++) {
    r -= scaled[order[j]!]!;
    if (r < 0) return order[j]!;
  }
  return order[kept - 1]!;
}
