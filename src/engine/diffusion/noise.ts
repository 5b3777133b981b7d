/**
 * Seeded standard-normal noise for the initial latent: xoshiro128** (seeded through splitmix32) and the
 * Box-Muller transform. The same seed gives the same image on every machine and Node version, which
 * is what a "regenerate with the same seed" button relies on.
 */

/** Fills `out` with N(0, 1) samples determined by `seed` (an integer). Returns `out`. */
export function fillGaussian(out: Float32Array, seed: number): Float32Array {
  const next = xoshiro128ss(seed);
  // 24-bit uniforms; u1 in (0, 1] keeps log() finite.
  const uniform = () => (next() >>> 8) * 2 ** -24;
  for (let i = 0; i < out.length; i += 2) {
    const u1 = 1 - uniform();
    const u2 = uniform();
    const radius = Math.sqrt(-2 * Math.log(u1));
    const angle = 2 * Math.PI * u2;
    out[i] = radius * Math.cos(angle);
    if (i + 1 < out.length) out[i + 1] = radius * Math.sin(angle);
  }
  return out;
}

function xoshiro128ss(seed: number): () => number {
  if (!Number.isSafeInteger(seed)) throw new RangeError(`the seed must be an integer, got ${seed}`);
  // splitmix32 spreads any seed (0 included) over the 128-bit state, which must not be all zeros.
  let s = (seed >>> 0) ^ Math.floor(seed / 2 ** 32);
  const splitmix = () => {
    s = (s + 0x9e3779b9) | 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = splitmix();
  let b = splitmix();
  let c = splitmix();
  let d = splitmix();
  return () => {
    const result = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
    const t = b << 9;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    d = rotl(d, 11);
    return result;
  };
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
