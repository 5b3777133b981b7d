import sharp, { type Metadata } from 'sharp';
import { UserInputError } from '../jobs.ts';
import type { Manifest } from './manifest.ts';

/**
 * Images in: whatever people post (JPEG, PNG in any colour type or depth, GIF, WebP; rotated by EXIF;
 * with alpha; CMYK) becomes the tensor the image encoder expects. Decompression bombs are refused from
 * the header, before any pixel is decoded.
 */

/** 40 megapixels: above any photo a phone takes, far below what a bomb asks for. */
export const MAX_INPUT_PIXELS = 40_000_000;

const SUPPORTED = new Map([
  ['jpeg', 'image/jpeg'],
  ['png', 'image/png'],
  ['gif', 'image/gif'],
  ['webp', 'image/webp'],
]);
const SUPPORTED_NAMES = 'JPEG, PNG, GIF or WebP';

export interface ImageInfo {
  format: string;
  mime: string;
  /** Displayed size, after EXIF rotation. */
  width: number;
  height: number;
}

export interface ImageLimits {
  maxPixels?: number;
}

function openImage(bytes: Uint8Array, limits: ImageLimits) {
  // pages: 1 keeps the first frame of a GIF or animated WebP; failOn 'error' accepts files with
  // harmless warnings (odd metadata) but not damaged pixel data.
  return sharp(bytes, { limitInputPixels: limits.maxPixels ?? MAX_INPUT_PIXELS, pages: 1, failOn: 'error' });
}

/** Reads the header: format, mime and displayed size. Throws UserInputError for anything we won't decode. */
export async function probeImage(bytes: Uint8Array, limits: ImageLimits = {}): Promise<ImageInfo> {
  if (bytes.byteLength === 0) throw new UserInputError('The image is empty (0 bytes).', 'image_corrupt');
  let meta: Metadata;
  try {
    meta = await sharp(bytes, { limitInputPixels: false, pages: 1 }).metadata();
  } catch {
    throw new UserInputError(
      `The file is not an image in a supported format (${SUPPORTED_NAMES}), or its bytes are damaged.`,
      'image_unsupported',
    );
  }
  const mime = meta.format ? SUPPORTED.get(meta.format) : undefined;
  if (!meta.format || !mime) {
    throw new UserInputError(
      `Images in ${(meta.format ?? 'this').toUpperCase()} format are not supported; please send ${SUPPORTED_NAMES}.`,
      'image_unsupported',
    );
  }
  const { width, height } = meta.autoOrient ?? meta;
  if (!width || !height) throw new UserInputError('The image has no pixels.', 'image_corrupt');
  const maxPixels = limits.maxPixels ?? MAX_INPUT_PIXELS;
  // A GIF's frames are decoded one at a time (pages: 1), so the limit is per frame.
  const framePixels = width * (meta.pageHeight ?? height);
  if (framePixels > maxPixels) {
    throw new UserInputError(
      `The image is too large (${width}×${height} pixels); the limit is ${(maxPixels / 1e6).toFixed(0)} megapixels.`,
      'image_too_large',
    );
  }
  return { format: meta.format, mime, width, height };
}

/** Decodes to 8-bit sRGB without alpha (flattened on white), upright per EXIF. */
function normalisedPipeline(bytes: Uint8Array, limits: ImageLimits) {
  return openImage(bytes, limits).autoOrient().flatten({ background: '#ffffff' }).toColourspace('srgb');
}

function decodeError(error: unknown): UserInputError {
  const message = error instanceof Error ? error.message : String(error);
  if (/pixel limit/i.test(message))
    return new UserInputError('The image is too large to process.', 'image_too_large');
  return new UserInputError(
    `The image's data is damaged and could not be decoded (${firstLine(message)}).`,
    'image_corrupt',
  );
}

function firstLine(message: string): string {
  return message
    .split('\n')[0]!
    .replace(/^Vips\w*:\s*/, '')
    .slice(0, 200);
}

/**
 * The encoder's input for one image: shortest side resized to imageSize (bicubic), centre crop,
 * scaled to [0,1] and normalised per channel, laid out CHW. Matches the CLIP feature extractor.
 */
export async function imageToPixelValues(
  bytes: Uint8Array,
  vision: Manifest['vision'],
  limits: ImageLimits = {},
): Promise<{ pixels: Float32Array; info: ImageInfo }> {
  const info = await probeImage(bytes, limits);
  const size = vision.imageSize;
  const short = Math.min(info.width, info.height);
  // The long side is rounded, as the bundle's PyTorch reference does (transformers truncates: at most
  // one pixel apart, before the centre crop).
  const resizedW = Math.max(size, Math.round((size * info.width) / short));
  const resizedH = Math.max(size, Math.round((size * info.height) / short));
  let raw: Buffer;
  try {
    raw = await normalisedPipeline(bytes, limits)
      .resize(resizedW, resizedH, { fit: 'fill', kernel: 'cubic' })
      .extract({ left: (resizedW - size) >> 1, top: (resizedH - size) >> 1, width: size, height: size })
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer();
  } catch (error) {
    throw decodeError(error);
  }
  if (raw.length !== size * size * 3) {
    throw new UserInputError('The image could not be converted to RGB.', 'image_corrupt');
  }
  const plane = size * size;
  const pixels = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    const mean = vision.mean[c]!;
    const std = vision.std[c]!;
    for (let i = 0; i < plane; i++) pixels[c * plane + i] = (raw[i * 3 + c]! / 255 - mean) / std;
  }
  return { pixels, info };
}

/** Upright 8-bit RGB pixels of an image, e.g. to inspect colours. */
export async function decodeRgb(
  bytes: Uint8Array,
  limits: ImageLimits = {},
): Promise<{ data: Buffer; width: number; height: number }> {
  await probeImage(bytes, limits);
  try {
    const { data, info } = await normalisedPipeline(bytes, limits)
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    return { data, width: info.width, height: info.height };
  } catch (error) {
    throw decodeError(error);
  }
}
