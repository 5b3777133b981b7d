import zlib from 'node:zlib';
import sharp from 'sharp';

/** Files a hostile or careless poster sends, for the image-intake tests. */

/** Text a phone writes into a photo's EXIF that must never be stored or re-posted. */
export const PRIVATE_TEXT = 'Alice, 12 Garden Lane';

/** EXIF with a GPS position and the private text, as a phone writes it. */
export const GPS_EXIF = {
  IFD0: { ImageDescription: PRIVATE_TEXT, Copyright: PRIVATE_TEXT },
  IFD3: {
    GPSLatitudeRef: 'N',
    GPSLatitude: '51/1 30/1 1234/100',
    GPSLongitudeRef: 'W',
    GPSLongitude: '0/1 7/1 3900/100',
  },
};

export function solid(width: number, height: number) {
  return sharp({ create: { width, height, channels: 3, background: '#c83232' } });
}

/** A 40×20 JPEG with GPS EXIF and orientation 6 (the camera was turned: it is shown 20×40). */
export function gpsPhoto(): Promise<Buffer> {
  return solid(40, 20).jpeg().withExif(GPS_EXIF).withMetadata({ orientation: 6 }).toBuffer();
}

/** Whether EXIF bytes hold a GPS IFD pointer (tag 0x8825, either byte order). */
export function hasGps(exif: Buffer | undefined): boolean {
  return !!exif && (exif.includes(Buffer.from([0x88, 0x25])) || exif.includes(Buffer.from([0x25, 0x88])));
}

function pngChunk(type: string, data: Buffer): Buffer {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(zlib.crc32(body));
  return Buffer.concat([length, body, crc]);
}

/** A valid side×side grey PNG (10000² by default: about 100 KB that decode to 100 MB), a decompression bomb. */
export function pngBomb(side = 10_000): Buffer {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(side, 0);
  header.writeUInt32BE(side, 4);
  header[8] = 8; // bit depth
  header[9] = 0; // greyscale
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', header),
    pngChunk('IDAT', zlib.deflateSync(Buffer.alloc((side + 1) * side), { level: 9 })),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

export const SVG = Buffer.from(
  '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
);

/** An animation of `frames` 16×16 frames, each a different grey. */
export function animation(format: 'gif' | 'webp', frames: number): Promise<Buffer> {
  const frameBytes = 16 * 16 * 4;
  const raw = Buffer.alloc(frameBytes * frames);
  for (let f = 0; f < frames; f++) raw.fill(f % 251, f * frameBytes, (f + 1) * frameBytes);
  return sharp(raw, { raw: { width: 16, height: 16 * frames, channels: 4, pageHeight: 16 } })
    .toFormat(format)
    .toBuffer();
}
