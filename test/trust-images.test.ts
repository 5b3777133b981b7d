import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createFetchGuard, FetchRefusedError } from '../src/bots/core/fetch-guard.ts';
import { createImageIngest, type ImageIngest, type StoredImage } from '../src/bots/core/images.ts';
import { connect } from '../src/store/connect.ts';
import type { Store } from '../src/store/types.ts';
import {
  animation,
  GPS_EXIF,
  gpsPhoto,
  hasGps,
  PRIVATE_TEXT,
  pngBomb,
  SVG,
  solid,
} from './support/hostile-files.ts';

/**
 * Hostile files through the bots' image intake (the fetch guard and the ingest into the real store, served
 * from a loopback file host): metadata never reaches the store, and every file that can't be taken gets a
 * specific reason for the person who posted it, in bounded time, with the process still serving.
 */

interface Served {
  body: Buffer;
  type: string;
}

let dataDir: string;
let store: Store;
let server: http.Server;
let origin: string;
let ingest: ImageIngest;
const files = new Map<string, Served>();
const samples: Record<string, Buffer> = {};

/** Ingests a file as a platform attachment declaring `declaredType`; settles within 20 s or says so. */
async function post(
  name: string,
  body: Buffer,
  options: { servedType?: string; declaredType?: string } = {},
): Promise<StoredImage | FetchRefusedError | string> {
  const key = `/${files.size}/${encodeURIComponent(name)}`;
  files.set(key, { body, type: options.servedType ?? 'image/png' });
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve('no answer within 20 s'), 20_000);
  });
  try {
    return await Promise.race([
      ingest
        .ingest({
          id: key,
          url: `${origin}${key}`,
          name,
          size: body.length,
          contentType: options.declaredType ?? 'image/png',
        })
        .catch((error: unknown) => (error instanceof FetchRefusedError ? error : `threw ${String(error)}`)),
      hung,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

async function storedBytes(result: unknown): Promise<Buffer> {
  expect(result, String(result)).not.toBeInstanceOf(FetchRefusedError);
  expect(typeof result, String(result)).toBe('object');
  const blob = await store.blobs.get((result as StoredImage).hash);
  expect(blob).not.toBeNull();
  return Buffer.from(blob!.bytes);
}

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), 'gill-trust-images-'));
  store = await connect({ DATABASE_URL: undefined, dataDir });
  server = http.createServer((req, res) => {
    const file = files.get(req.url ?? '');
    if (!file) return res.writeHead(404).end();
    res
      .writeHead(200, { 'content-type': file.type, 'content-length': String(file.body.length) })
      .end(file.body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  ingest = createImageIngest({ store, guard: createFetchGuard({ allowed: [origin] }) });

  samples.png = await solid(40, 30).png().toBuffer();
  samples.jpeg = await solid(40, 30).jpeg().toBuffer();
  samples.gpsJpeg = await gpsPhoto();
  samples.gpsPng = await solid(40, 20).png().withExif(GPS_EXIF).toBuffer();
  samples.gpsWebp = await solid(40, 20).webp().withExif(GPS_EXIF).toBuffer();
});

afterAll(async () => {
  server?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve));
  await store?.close();
  await rm(dataDir, { recursive: true, force: true });
});

describe('metadata is stripped from stored images', () => {
  it('the samples carry GPS EXIF and the private text to begin with', async () => {
    for (const format of ['gpsJpeg', 'gpsPng', 'gpsWebp']) {
      const meta = await sharp(samples[format]).metadata();
      expect(hasGps(meta.exif), format).toBe(true);
      expect(samples[format]!.includes(PRIVATE_TEXT), format).toBe(true);
    }
  });

  it.each([
    ['photo.jpg', 'gpsJpeg', 'image/jpeg', 20, 40],
    ['shot.png', 'gpsPng', 'image/png', 40, 20],
    ['pic.webp', 'gpsWebp', 'image/webp', 40, 20],
  ])('%s is stored upright without EXIF, GPS or its text', async (name, sample, mime, width, height) => {
    const result = await post(name, samples[sample]!, { servedType: mime, declaredType: mime });
    const bytes = await storedBytes(result);
    expect(result).toMatchObject({ mime, width, height });
    const meta = await sharp(bytes).metadata();
    expect(meta).toMatchObject({ width, height });
    expect(meta.exif).toBeUndefined();
    expect(meta.orientation).toBeUndefined();
    expect(meta.xmp).toBeUndefined();
    expect(bytes.includes(PRIVATE_TEXT)).toBe(false);
  });

  it('drops what is appended after the image (a polyglot file)', async () => {
    const trailer = Buffer.from(`<script>alert("${PRIVATE_TEXT}")</script>`);
    const bytes = await storedBytes(await post('polyglot.png', Buffer.concat([samples.png!, trailer])));
    expect(bytes.includes(trailer)).toBe(false);
    expect((await sharp(bytes).metadata()).format).toBe('png');
  });
});

describe('hostile files get a specific reason and do not hang the intake', () => {
  const truncated = (bytes: Buffer) => bytes.subarray(0, Math.floor(bytes.length * 0.6));

  it.each<
    [string, () => Buffer | Promise<Buffer>, { servedType?: string; declaredType?: string }, string, string]
  >([
    [
      'bomb.png',
      () => pngBomb(),
      {},
      'too_many_pixels',
      '"bomb.png" is 10000×10000 pixels; the limit is 16,777,216 pixels',
    ],
    [
      'cut.png',
      () => truncated(samples.png!),
      {},
      'corrupt',
      '"cut.png" looks like a png image but is damaged or truncated',
    ],
    [
      'cut.jpg',
      () => truncated(samples.jpeg!),
      { servedType: 'image/jpeg', declaredType: 'image/jpeg' },
      'corrupt',
      '"cut.jpg" looks like a jpeg image but is damaged or truncated',
    ],
    [
      'drawing.png',
      () => SVG,
      {},
      'not_image',
      '"drawing.png" is a svg file, not a PNG, JPEG, WebP or GIF image',
    ],
    [
      'page.png',
      () => Buffer.from('<!doctype html><html><body><script>alert(1)</script></body></html>'),
      {},
      'not_image',
      '"page.png" is not an image (PNG, JPEG, WebP or GIF)',
    ],
    ['empty.png', () => Buffer.alloc(0), {}, 'not_image', '"empty.png" is empty (0 bytes)'],
  ])('%s is refused', async (name, make, options, reason, message) => {
    const result = await post(name, await make(), options);
    expect(result, String(result)).toBeInstanceOf(FetchRefusedError);
    expect((result as FetchRefusedError).reason).toBe(reason);
    expect((result as FetchRefusedError).message).toBe(message);
  });

  it.each([
    ['gif', 'image/gif'],
    ['webp', 'image/webp'],
  ] as const)('an animated %s of 2000 frames is kept as its first frame', async (format, mime) => {
    const frames = await animation(format, 2000);
    expect((await sharp(frames).metadata()).pages).toBeGreaterThan(1);
    const result = await post(`many.${format}`, frames, { servedType: mime, declaredType: mime });
    const bytes = await storedBytes(result);
    expect(result).toMatchObject({ mime, width: 16, height: 16 });
    const meta = await sharp(bytes).metadata();
    expect(meta.pages ?? 1).toBe(1);
    expect(meta).toMatchObject({ format, width: 16, height: 16 });
  });

  it('goes by the bytes, not by a Content-Type that lies', async () => {
    // Declared and served as PNG, but a JPEG: stored as what it is.
    const jpeg = await post('really-a.png', samples.jpeg!, {
      servedType: 'image/png',
      declaredType: 'image/png',
    });
    expect(jpeg).toMatchObject({ mime: 'image/jpeg', width: 40, height: 30 });
    expect((await sharp(await storedBytes(jpeg)).metadata()).format).toBe('jpeg');
    // Served as an opaque download, but a PNG.
    const png = await post('opaque.png', samples.png!, { servedType: 'application/octet-stream' });
    expect(png).toMatchObject({ mime: 'image/png', width: 40, height: 30 });
    // Served as a GIF, but HTML.
    const html = await post('fake.gif', Buffer.from('<html><body>hi</body></html>'), {
      servedType: 'image/gif',
      declaredType: 'image/gif',
    });
    expect(html).toBeInstanceOf(FetchRefusedError);
    expect((html as FetchRefusedError).message).toBe('"fake.gif" is not an image (PNG, JPEG, WebP or GIF)');
  });

  it('still takes an ordinary image after all of them', async () => {
    const result = await post('fine.png', await solid(12, 12).png().toBuffer());
    expect(result).toMatchObject({ mime: 'image/png', width: 12, height: 12 });
  });
});
