/**
 * IEEE 754 half precision (binary16) ↔ float32, for graphs that take or return float16 tensors: ONNX
 * Runtime's Node binding carries them as the raw 16-bit patterns in a Uint16Array, and Node 20 has no
 * Float16Array. Float32 → float16 rounds to nearest, ties to even, as numpy and torch do; values beyond the
 * float16 range become ±Infinity, NaN stays NaN.
 */

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

/** The float16 bit pattern nearest to `value`. */
export function float16Bits(value: number): number {
  scratch[0] = value;
  const x = scratchBits[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  const mantissa = x & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  const e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal in float16: m × 2^-24, with the implicit leading bit made explicit.
    if (e < -10) return sign;
    const full = mantissa | 0x800000;
    const shift = 14 - e;
    let half = full >>> shift;
    const rest = full & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rest > halfway || (rest === halfway && half & 1)) half++;
    return sign | half;
  }
  let half = sign | (e << 10) | (mantissa >>> 13);
  const rest = mantissa & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (up to Infinity).
  if (rest > 0x1000 || (rest === 0x1000 && half & 1)) half++;
  return half;
}

let table: Float32Array | undefined;

/** Every float16 pattern's value, built once (256 KiB): reading float16 outputs is then one lookup per value. */
function float16Table(): Float32Array {
  if (table) return table;
  table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const e = (h >>> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0) table[h] = sign * m * 2 ** -24;
    else if (e === 0x1f) table[h] = m ? Number.NaN : sign * Number.POSITIVE_INFINITY;
    else table[h] = sign * (1 + m / 1024) * 2 ** (e - 15);
  }
  return table;
}

/** float32 values → float16 patterns, into `out` when given. */
export function toFloat16(values: ArrayLike<number>, out = new Uint16Array(values.length)): Uint16Array {
  for (let i = 0; i < values.length; i++) out[i] = float16Bits(values[i]!);
  return out;
}

/** float16 patterns → float32 values, into `out` when given. */
export function fromFloat16(bits: Uint16Array, out = new Float32Array(bits.length)): Float32Array {
  const values = float16Table();
  for (let i = 0; i < bits.length; i++) out[i] = values[bits[i]!]!;
  return out;
}
