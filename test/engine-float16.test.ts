import { describe, expect, it } from 'vitest';
import { float16Bits, fromFloat16, toFloat16 } from '../src/engine/float16.ts';

describe('float16 conversion', () => {
  it('rounds to the nearest float16, ties to even, as numpy does', () => {
    const cases: [number, number][] = [
      [0, 0x0000],
      [-0, 0x8000],
      [1, 0x3c00],
      [-2, 0xc000],
      [0.1, 0x2e66], // numpy: np.float16(0.1).view(np.uint16) == 0x2e66
      [65504, 0x7bff], // the largest finite float16
      [65520, 0x7c00], // halfway to the next (absent) value rounds to Infinity
      [1e6, 0x7c00],
      [Number.NEGATIVE_INFINITY, 0xfc00],
      [2 ** -24, 0x0001], // the smallest subnormal
      [2 ** -25, 0x0000], // a tie below it rounds to even (0)
      [3 * 2 ** -25, 0x0002], // a tie at 1.5 subnormal steps rounds to even (2)
      [2 ** -14, 0x0400], // the smallest normal
      [1 + 2 ** -11, 0x3c00], // a tie between 1 and its successor rounds to even (1)
      [1 + 3 * 2 ** -11, 0x3c02], // a tie between the 1st and 2nd successor rounds to the 2nd
      [1 + 2 ** -11 + 2 ** -20, 0x3c01], // just above the tie rounds up
    ];
    for (const [value, bits] of cases) expect(float16Bits(value), String(value)).toBe(bits);
    expect(float16Bits(Number.NaN) & 0x7c00).toBe(0x7c00);
    expect(float16Bits(Number.NaN) & 0x3ff).not.toBe(0);
  });

  it('round-trips every float16 value exactly', () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const values = fromFloat16(all);
    const back = toFloat16(values);
    for (let h = 0; h < 65536; h++) {
      if (Number.isNaN(values[h])) continue;
      if (back[h] !== h) expect.fail(`0x${h.toString(16)} → ${values[h]} → 0x${back[h]!.toString(16)}`);
    }
    expect(values[0x3c00]).toBe(1);
    expect(values[0x7bff]).toBe(65504);
    expect(values[0x0001]).toBe(2 ** -24);
    expect(values[0xfc00]).toBe(Number.NEGATIVE_INFINITY);
  });
});
