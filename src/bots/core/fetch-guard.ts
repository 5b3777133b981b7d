import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import http from 'node:http';
import https from 'node:https';
import { BlockList, isIP, type LookupFunction } from 'node:net';
import sharp, { type Metadata } from 'sharp';
import { UserInputError } from '../../jobs.ts';

/**
 * Fetches user-posted images from the platform's own file hosts only (no SSRF): the URL's origin must be
 * one of the configured origins exactly, redirects are followed only within them, configured host names
 * must resolve to public addresses, the body is capped in bytes while streaming and in pixels before
 * decoding, and the whole download (redirects included) has a deadline as well as an idle timeout, so a
 * host dripping a byte at a time cannot hold a turn. What it returns is re-encoded without metadata
 * (see `reencode`), so what the bots store and re-post carries no EXIF or GPS position. Tests configure the fake platform's loopback origin,
 * so the same guard runs everywhere.
 */

export interface AllowedOrigin {
  /** e.g. "https://cdn.discordapp.com"; scheme, host and port must match exactly. */
  origin: string;
  /** Headers sent to this origin only (Slack's files need `Authorization: Bearer <bot token>`). */
  headers?: Record<string, string>;
}

export interface FetchGuardOptions {
  allowed: Array<AllowedOrigin | string>;
  /** Largest body accepted, in bytes. */
  maxBytes?: number;
  /** Largest image accepted, in width × height. */
  maxPixels?: number;
  /** Longest silence on the connection, in milliseconds. */
  timeoutMs?: number;
  /** Longest whole download, redirects included, in milliseconds. */
  deadlineMs?: number;
  maxRedirects?: number;
}

export interface FetchedImage {
  /** The first frame, upright, re-encoded without metadata (see `reencode`); not the bytes as downloaded. */
  bytes: Uint8Array;
  mime: string;
  width: number;
  height: number;
}

export type FetchRefusal =
  | 'bad_url'
  | 'foreign_host'
  | 'private_address'
  | 'too_large'
  | 'too_many_pixels'
  | 'not_image'
  | 'corrupt'
  | 'too_slow'
  | 'unavailable';

/** Why an image was not taken; the message names the file and is meant for the person who posted it. */
export class FetchRefusedError extends UserInputError {
  constructor(
    message: string,
    readonly reason: FetchRefusal,
  ) {
    super(message, reason);
    this.name = 'FetchRefusedError';
  }
}

interface Answer {
  status: number;
  location?: string;
  type: string;
  body: Buffer;
}

export interface FetchGuard {
  /** Maximum body size in bytes, so callers can refuse a file whose declared size is already over it. */
  readonly maxBytes: number;
  /** True when the URL's origin is one of the configured ones (nothing is fetched). */
  allows(url: string): boolean;
  /** Downloads and validates one image; throws FetchRefusedError with a message for the user. */
  fetchImage(url: string, name?: string): Promise<FetchedImage>;
}

export const DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024;
export const DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096;
export const DEFAULT_DOWNLOAD_DEADLINE_MS = 30_000;

/** The formats taken, with how each is re-encoded (lossy ones near-losslessly). */
const FORMATS = {
  jpeg: { mime: 'image/jpeg', encoding: { quality: 90 } },
  png: { mime: 'image/png', encoding: {} },
  webp: { mime: 'image/webp', encoding: { quality: 90 } },
  gif: { mime: 'image/gif', encoding: {} },
} as const;
type Format = keyof typeof FORMATS;

function isTaken(format: string | undefined): format is Format {
  return format !== undefined && Object.hasOwn(FORMATS, format);
}

// Addresses a public file host never resolves to: loopback, private, link-local, CGNAT, multicast,
// documentation and reserved ranges (IANA's IPv4 and IPv6 special-purpose address registries), and the
// IPv6 ranges that embed or tunnel to an IPv4 address (IPv4-compatible, 6to4, Teredo, NAT64), which could
// reach a private IPv4 host.
const NON_PUBLIC = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const) {
  NON_PUBLIC.addSubnet(net, prefix, 'ipv4');
}
for (const [net, prefix] of [
  // Unspecified, loopback and IPv4-compatible (::a.b.c.d).
  ['::', 96],
  ['64:ff9b::', 96],
  ['64:ff9b:1::', 48],
  ['100::', 64],
  ['2001::', 32],
  ['2001:db8::', 32],
  ['2002::', 16],
  ['fc00::', 7],
  ['fe80::', 10],
  ['fec0::', 10],
  ['ff00::', 8],
] as const) {
  NON_PUBLIC.addSubnet(net, prefix, 'ipv6');
}

/** The IPv4 address inside an IPv4-mapped IPv6 address (::ffff:a.b.c.d, also written ::ffff:7f00:1). */
function mappedIPv4(address: string): string | null {
  const normal = new URL(`http://[${address}]/`).hostname.slice(1, -1);
  const match = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(normal);
  if (!match) return null;
  const [high, low] = [Number.parseInt(match[1]!, 16), Number.parseInt(match[2]!, 16)];
  return [high >> 8, high & 255, low >> 8, low & 255].join('.');
}

export function isPublicAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0) return false;
  if (family === 4) return !NON_PUBLIC.check(address, 'ipv4');
  const v4 = mappedIPv4(address);
  return v4 ? !NON_PUBLIC.check(v4, 'ipv4') : !NON_PUBLIC.check(address, 'ipv6');
}

function originOf(raw: string): string | null {
  try {
    const url = new URL(raw);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.origin : null;
  } catch {
    return null;
  }
}

/** A DNS lookup that fails unless every address of the name is public, so a connection can't be steered inward. */
const publicOnlyLookup: LookupFunction = (hostname, options, callback) => {
  dnsLookup(hostname, { ...options, all: true }, (error, addresses) => {
    if (error) return callback(error, '', 0);
    const list = addresses as unknown as LookupAddress[];
    const bad = list.find((a) => !isPublicAddress(a.address));
    if (bad || list.length === 0) {
      const refusal = Object.assign(new Error(`${hostname} resolves to a non-public address`), {
        code: 'GILL_PRIVATE_ADDRESS',
      });
      return callback(refusal, '', 0);
    }
    if (options.all) return (callback as (e: null, a: LookupAddress[]) => void)(null, list);
    const first = list[0]!;
    callback(null, first.address, first.family);
  });
};

export function createFetchGuard(options: FetchGuardOptions): FetchGuard {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_IMAGE_BYTES;
  const maxPixels = options.maxPixels ?? DEFAULT_MAX_IMAGE_PIXELS;
  const timeoutMs = options.timeoutMs ?? 15_000;
  const deadlineMs = options.deadlineMs ?? DEFAULT_DOWNLOAD_DEADLINE_MS;
  const maxRedirects = options.maxRedirects ?? 3;
  const allowed = new Map<string, Record<string, string>>();
  for (const entry of options.allowed) {
    const spec = typeof entry === 'string' ? { origin: entry } : entry;
    const origin = originOf(spec.origin);
    if (!origin) throw new Error(`fetch guard: "${spec.origin}" is not an http(s) origin`);
    allowed.set(origin, spec.headers ?? {});
  }

  /** One request, given up at `deadline` (epoch milliseconds) wherever it stands. */
  function download(url: URL, label: string, deadline: number): Promise<Answer> {
    const headers = allowed.get(url.origin) ?? {};
    // A configured IP literal is the operator's explicit choice (the fake platform in tests); names must resolve publicly.
    const lookup = isIP(url.hostname.replace(/^\[|\]$/g, '')) ? undefined : publicOnlyLookup;
    const client = url.protocol === 'https:' ? https : http;
    let timer: NodeJS.Timeout | undefined;
    const answer = new Promise<Answer>((resolve, reject) => {
      const fail = (error: NodeJS.ErrnoException) => {
        if (error.code === 'GILL_PRIVATE_ADDRESS') {
          reject(
            new FetchRefusedError(
              `${label}: its host resolves to a private address, so it was not fetched`,
              'private_address',
            ),
          );
        } else {
          reject(
            new FetchRefusedError(`${label}: could not be downloaded (${error.message})`, 'unavailable'),
          );
        }
      };
      const request = client.get(url, { headers, lookup, timeout: timeoutMs }, (response) => {
        const status = response.statusCode ?? 0;
        const type = String(response.headers['content-type'] ?? '');
        if (status >= 300 && status < 400) {
          response.resume();
          return resolve({ status, location: response.headers.location, type, body: Buffer.alloc(0) });
        }
        const declared = Number(response.headers['content-length']);
        if (Number.isFinite(declared) && declared > maxBytes) {
          response.destroy();
          return reject(tooLarge(label, maxBytes));
        }
        const chunks: Buffer[] = [];
        let received = 0;
        response.on('data', (chunk: Buffer) => {
          received += chunk.length;
          if (received > maxBytes) {
            response.destroy();
            reject(tooLarge(label, maxBytes));
            return;
          }
          chunks.push(chunk);
        });
        response.on('end', () => resolve({ status, type, body: Buffer.concat(chunks) }));
        response.on('error', fail);
      });
      request.on('timeout', () => request.destroy(new Error(`no answer within ${timeoutMs} ms`)));
      request.on('error', fail);
      timer = setTimeout(
        () => {
          // Settled first, so the errors that destroying the request raises change nothing.
          reject(tooSlow(label, deadlineMs));
          request.destroy();
        },
        Math.max(0, deadline - Date.now()),
      );
    });
    return answer.finally(() => clearTimeout(timer));
  }

  async function decode(body: Buffer, label: string): Promise<FetchedImage> {
    if (body.length === 0) throw new FetchRefusedError(`${label} is empty (0 bytes)`, 'not_image');
    let meta: Metadata;
    try {
      meta = await sharp(body).metadata();
    } catch {
      const format = sniff(body);
      if (format) {
        throw new FetchRefusedError(
          `${label} looks like a ${format} image but is damaged or truncated`,
          'corrupt',
        );
      }
      throw new FetchRefusedError(`${label} is not an image (PNG, JPEG, WebP or GIF)`, 'not_image');
    }
    const format = meta.format;
    if (!isTaken(format)) {
      throw new FetchRefusedError(
        `${label} is a ${format ?? 'unknown'} file, not a PNG, JPEG, WebP or GIF image`,
        'not_image',
      );
    }
    const width = meta.width ?? 0;
    const height = meta.height ?? 0;
    if (width * height > maxPixels) {
      throw new FetchRefusedError(
        `${label} is ${width}×${height} pixels; the limit is ${maxPixels.toLocaleString('en-US')} pixels`,
        'too_many_pixels',
      );
    }
    try {
      // Upright dimensions: a rotated photo's width and height swap.
      const { data, info } = await reencode(body, format, maxPixels);
      return {
        bytes: new Uint8Array(data),
        mime: FORMATS[format].mime,
        width: info.width,
        height: info.height,
      };
    } catch {
      throw new FetchRefusedError(
        `${label} looks like a ${format} image but is damaged or truncated`,
        'corrupt',
      );
    }
  }

  return {
    maxBytes,
    allows: (url) => {
      const origin = originOf(url);
      return origin !== null && allowed.has(origin);
    },
    async fetchImage(raw, name) {
      const label = name ? `"${name}"` : 'The image';
      let url: URL;
      try {
        url = new URL(raw);
      } catch {
        throw new FetchRefusedError(`${label}: "${raw.slice(0, 200)}" is not a URL`, 'bad_url');
      }
      const deadline = Date.now() + deadlineMs;
      for (let hop = 0; ; hop++) {
        if (!allowed.has(url.origin)) {
          throw new FetchRefusedError(
            `${label}: images are only taken from this platform's own file hosts, not from ${url.host || url.protocol}`,
            'foreign_host',
          );
        }
        const answer = await download(url, label, deadline);
        if (answer.status >= 300 && answer.status < 400) {
          if (!answer.location || hop >= maxRedirects) {
            throw new FetchRefusedError(`${label}: too many redirects`, 'unavailable');
          }
          url = new URL(answer.location, url);
          continue;
        }
        if (answer.status !== 200) {
          throw new FetchRefusedError(
            `${label} could not be downloaded (HTTP ${answer.status}); it may have been deleted or expired`,
            'unavailable',
          );
        }
        if (answer.type.startsWith('text/html')) {
          // Slack answers 200 with a sign-in page when the bot token lacks files:read.
          throw new FetchRefusedError(
            `${label}: the file host answered with a web page, not an image (missing permission?)`,
            'not_image',
          );
        }
        return decode(answer.body, label);
      }
    },
  };
}

/**
 * The image as the bot keeps it: its first frame, upright, re-encoded in its own format without any
 * metadata (sharp keeps none unless asked with withMetadata). That drops EXIF (GPS position, camera serial
 * number), XMP, IPTC, comments and anything appended after the image, so none of it is stored or
 * re-posted; the orientation is applied first because it goes with the EXIF. Decoding the whole frame is
 * also the only way to find truncated or corrupt data before the engine does.
 */
function reencode(body: Buffer, format: Format, maxPixels: number) {
  return sharp(body, { limitInputPixels: maxPixels, failOn: 'warning', pages: 1 })
    .rotate()
    .toFormat(format, FORMATS[format].encoding)
    .toBuffer({ resolveWithObject: true });
}

/** The format a file's first bytes announce, to tell a damaged image from something that never was one. */
function sniff(body: Buffer): string | null {
  if (body.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return 'png';
  if (body[0] === 0xff && body[1] === 0xd8 && body[2] === 0xff) return 'jpeg';
  if (body.subarray(0, 4).toString('latin1') === 'GIF8') return 'gif';
  if (body.subarray(0, 4).toString('latin1') === 'RIFF' && body.subarray(8, 12).toString('latin1') === 'WEBP')
    return 'webp';
  return null;
}

function tooSlow(label: string, deadlineMs: number): FetchRefusedError {
  return new FetchRefusedError(
    `${label}: its host took longer than ${Math.ceil(deadlineMs / 1000)} s to send it, so it was not read`,
    'too_slow',
  );
}

function tooLarge(label: string, maxBytes: number): FetchRefusedError {
  return new FetchRefusedError(`${label} is larger than ${formatBytes(maxBytes)}`, 'too_large');
}

export function formatBytes(bytes: number): string {
  if (bytes >= 1024 * 1024) return `${(bytes / (1024 * 1024)).toFixed(bytes % (1024 * 1024) ? 1 : 0)} MiB`;
  if (bytes >= 1024) return `${Math.round(bytes / 1024)} KiB`;
  return `${bytes} bytes`;
}
