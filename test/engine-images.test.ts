import { execFile } from 'node:child_process';
import { rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { crc32 } from 'node:zlib';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { decodeRgb, imageToPixelValues, probeImage } from '../src/engine/images.ts';
import type { Manifest } from '../src/engine/manifest.ts';
import { UserInputError } from '../src/jobs.ts';
import { serviceAvailable } from './support/services.ts';

const run = promisify(execFile);
const pilUp = await serviceAvailable('Python with PIL (/usr/bin/python3)', () =>
  run('/usr/bin/python3', ['-c', 'import PIL, numpy']),
);

const vision: Manifest['vision'] = {
  encoder: 'image_encoder.onnx',
  imageSize: 16,
  resize: 'shortest-side-bicubic-center-crop',
  mean: [0.5, 0.5, 0.5],
  std: [0.5, 0.5, 0.5],
  pooledSize: 8,
};

type Rgb = [number, number, number];

function solid(width: number, height: number, [r, g, b]: Rgb, alpha?: number) {
  return sharp({
    create: {
      width,
      height,
      channels: alpha === undefined ? 3 : 4,
      background: alpha === undefined ? { r, g, b } : { r, g, b, alpha },
    },
  });
}

/** Mean colour of the encoder input, back in 0..255. */
function meanColour(pixels: Float32Array): Rgb {
  const plane = pixels.length / 3;
  return [0, 1, 2].map((c) => {
    let sum = 0;
    for (let i = 0; i < plane; i++) sum += pixels[c * plane + i]!;
    return Math.round(((sum / plane) * vision.std[c]! + vision.mean[c]!) * 255);
  }) as Rgb;
}

function expectColour(got: Rgb, want: Rgb, tolerance = 12) {
  for (let c = 0; c < 3; c++)
    expect(Math.abs(got[c]! - want[c]!), `channel ${c}: ${got} vs ${want}`).toBeLessThanOrEqual(tolerance);
}

async function rejection(promise: Promise<unknown>): Promise<UserInputError> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(UserInputError);
  return error as UserInputError;
}

/** A valid PNG whose header claims width×height: what a decompression bomb looks like before decoding. */
async function pngClaiming(width: number, height: number): Promise<Buffer> {
  const png = await solid(8, 8, [0, 0, 0]).png().toBuffer();
  // IHDR is the first chunk: 8-byte signature, 4 length, 4 type, then width and height.
  png.writeUInt32BE(width, 16);
  png.writeUInt32BE(height, 20);
  png.writeUInt32BE(crc32(png.subarray(12, 29)), 29);
  return png;
}

describe('image input pipeline', () => {
  it('normalises a JPEG to the encoder tensor (CHW, mean/std)', async () => {
    const jpeg = await solid(40, 30, [255, 0, 0]).jpeg({ quality: 95 }).toBuffer();
    const { pixels, info } = await imageToPixelValues(jpeg, vision);
    expect(info).toEqual({ format: 'jpeg', mime: 'image/jpeg', width: 40, height: 30 });
    expect(pixels.length).toBe(3 * 16 * 16);
    // red → (1 - 0.5) / 0.5 = 1 in channel 0, −1 in the others
    expect(pixels[0]).toBeCloseTo(1, 1);
    expect(pixels[16 * 16]).toBeCloseTo(-1, 1);
    expect(pixels[2 * 16 * 16]).toBeCloseTo(-1, 1);
  });

  it('centre-crops after resizing the shortest side', async () => {
    // 48×16: left third blue, middle green, right blue. The crop keeps the middle square only.
    const image = await sharp({
      create: { width: 48, height: 16, channels: 3, background: { r: 0, g: 0, b: 255 } },
    })
      .composite([{ input: await solid(16, 16, [0, 255, 0]).png().toBuffer(), left: 16, top: 0 }])
      .png()
      .toBuffer();
    const { pixels } = await imageToPixelValues(image, vision);
    expectColour(meanColour(pixels), [0, 255, 0], 20);
  });

  it('turns a CMYK JPEG into sRGB', async () => {
    const cmyk = await solid(20, 20, [255, 0, 0]).toColourspace('cmyk').jpeg().toBuffer();
    expect((await sharp(cmyk).metadata()).space).toBe('cmyk');
    const { pixels } = await imageToPixelValues(cmyk, vision);
    const [r, g, b] = meanColour(pixels);
    expect(r).toBeGreaterThan(200);
    expect(g).toBeLessThan(80);
    expect(b).toBeLessThan(80);
  });

  it('reads a 16-bit PNG', async () => {
    const png16 = await solid(20, 20, [0, 0, 255]).toColourspace('rgb16').png().toBuffer();
    expect((await sharp(png16).metadata()).depth).toBe('ushort');
    const { pixels } = await imageToPixelValues(png16, vision);
    expectColour(meanColour(pixels), [0, 0, 255], 2);
  });

  it('reads a palette PNG', async () => {
    const palette = await solid(20, 20, [255, 200, 0]).png({ palette: true, colours: 4 }).toBuffer();
    expect((await sharp(palette).metadata()).isPalette).toBe(true);
    const { pixels } = await imageToPixelValues(palette, vision);
    expectColour(meanColour(pixels), [255, 200, 0], 4);
  });

  it('reads a greyscale PNG as three equal channels', async () => {
    const grey = await solid(20, 20, [128, 128, 128]).toColourspace('b-w').png().toBuffer();
    expect((await sharp(grey).metadata()).channels).toBe(1);
    expectColour(meanColour((await imageToPixelValues(grey, vision)).pixels), [128, 128, 128], 2);
  });

  it('flattens transparency onto white', async () => {
    const transparent = await solid(20, 20, [0, 0, 0], 0).png().toBuffer();
    expectColour(meanColour((await imageToPixelValues(transparent, vision)).pixels), [255, 255, 255], 2);
  });

  it('takes the first frame of an animated GIF', async () => {
    const frames = [
      await solid(16, 16, [255, 0, 0]).png().toBuffer(),
      await solid(16, 16, [0, 0, 255]).png().toBuffer(),
    ];
    const gif = await sharp(frames, { join: { animated: true } })
      .gif()
      .toBuffer();
    expect((await sharp(gif).metadata()).pages).toBe(2);
    const { pixels, info } = await imageToPixelValues(gif, vision);
    expect(info).toMatchObject({ format: 'gif', width: 16, height: 16 });
    const [r, , b] = meanColour(pixels);
    expect(r).toBeGreaterThan(200);
    expect(b).toBeLessThan(60);
  });

  it('reads WebP', async () => {
    const webp = await solid(24, 24, [0, 255, 0]).webp({ lossless: true }).toBuffer();
    const { pixels, info } = await imageToPixelValues(webp, vision);
    expect(info.mime).toBe('image/webp');
    expectColour(meanColour(pixels), [0, 255, 0], 2);
  });

  it('applies EXIF rotation', async () => {
    // Stored 20×10 with red on the left; orientation 6 means "rotate 90° clockwise to display",
    // so the displayed image is 10×20 with red on top.
    const stored = await sharp({
      create: { width: 20, height: 10, channels: 3, background: { r: 0, g: 0, b: 255 } },
    })
      .composite([{ input: await solid(10, 10, [255, 0, 0]).png().toBuffer(), left: 0, top: 0 }])
      .withMetadata({ orientation: 6 })
      .jpeg({ quality: 95 })
      .toBuffer();
    expect((await sharp(stored).metadata()).orientation).toBe(6);
    expect(await probeImage(stored)).toMatchObject({ width: 10, height: 20 });
    const { data, width, height } = await decodeRgb(stored);
    expect([width, height]).toEqual([10, 20]);
    const top = [data[0]!, data[1]!, data[2]!] as Rgb;
    const bottomStart = (19 * 10 + 9) * 3;
    const bottom = [data[bottomStart]!, data[bottomStart + 1]!, data[bottomStart + 2]!] as Rgb;
    expectColour(top, [255, 0, 0], 40);
    expectColour(bottom, [0, 0, 255], 40);
  });

  it('refuses a 30000×30000 decompression bomb from its header', async () => {
    const bomb = await pngClaiming(30000, 30000);
    expect((await sharp(bomb, { limitInputPixels: false }).metadata()).width).toBe(30000);
    const error = await rejection(imageToPixelValues(bomb, vision));
    expect(error.code).toBe('image_too_large');
    expect(error.message).toContain('30000×30000');
  });

  it('honours a lower pixel limit', async () => {
    const png = await solid(100, 100, [1, 2, 3]).png().toBuffer();
    const error = await rejection(imageToPixelValues(png, vision, { maxPixels: 5000 }));
    expect(error.code).toBe('image_too_large');
  });

  it('refuses corrupt bytes', async () => {
    const garbage = Buffer.from(Array.from({ length: 2000 }, (_, i) => (i * 7919) % 251));
    expect((await rejection(imageToPixelValues(garbage, vision))).code).toBe('image_unsupported');
    expect((await rejection(imageToPixelValues(new Uint8Array(0), vision))).code).toBe('image_corrupt');
  });

  it('refuses a truncated JPEG as damaged', async () => {
    const noise = Buffer.from(Array.from({ length: 64 * 64 * 3 }, (_, i) => (i * 2654435761) % 256));
    const jpeg = await sharp(noise, { raw: { width: 64, height: 64, channels: 3 } })
      .jpeg()
      .toBuffer();
    const truncated = jpeg.subarray(0, jpeg.length >> 1);
    const error = await rejection(imageToPixelValues(truncated, vision));
    expect(error.code).toBe('image_corrupt');
    expect(error.message).toMatch(/damaged/);
  });

  it('refuses formats it does not support, naming them', async () => {
    const tiff = await solid(10, 10, [0, 0, 0]).tiff().toBuffer();
    const error = await rejection(imageToPixelValues(tiff, vision));
    expect(error.code).toBe('image_unsupported');
    expect(error.message).toContain('TIFF');
    const svg = Buffer.from(
      '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
    );
    expect((await rejection(imageToPixelValues(svg, vision))).message).toContain('SVG');
  });

  it.skipIf(!pilUp)('matches the PIL preprocessing of the PyTorch reference', async () => {
    // A non-square image with a gradient, a high-frequency pattern and a half-transparent band.
    const width = 300;
    const height = 200;
    const rgba = Buffer.alloc(width * height * 4);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const i = (y * width + x) * 4;
        rgba.set([(x * 255) / width, (y * 255) / height, (x ^ y) & 255, x < 50 ? 128 : 255], i);
      }
    }
    const png = await sharp(rgba, { raw: { width, height, channels: 4 } })
      .png()
      .toBuffer();
    const file = path.join(tmpdir(), `gill-pil-${process.pid}.png`);
    await writeFile(file, png);
    const size = 64;
    const { stdout } = await run('/usr/bin/python3', ['test/support/pil_preprocess.py', file, String(size)], {
      encoding: 'buffer',
    });
    await rm(file);
    const { pixels } = await imageToPixelValues(png, { ...vision, imageSize: size });
    let max = 0;
    let sum = 0;
    for (let c = 0; c < 3; c++) {
      for (let i = 0; i < size * size; i++) {
        const mine = (pixels[c * size * size + i]! * vision.std[c]! + vision.mean[c]!) * 255;
        const diff = Math.abs(mine - stdout[i * 3 + c]!);
        max = Math.max(max, diff);
        sum += diff;
      }
    }
    expect(max).toBeLessThanOrEqual(4);
    expect(sum / (3 * size * size)).toBeLessThan(0.5);
  });
});
