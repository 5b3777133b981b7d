import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { BlockList, isIP } from 'node:net';
import path from 'node:path';
import type { Logger } from '../../log.ts';
import type { Store } from '../../store/types.ts';
import { PlaygroundRefusal } from './errors.ts';
import type { EventHub } from './events.ts';
import {
  BOT_NAME,
  checkClientKey,
  checkUser,
  MAX_FILES,
  MAX_MESSAGE_CHARS,
  type PlaygroundInbound,
} from './inbound.ts';
import type { PlaygroundMessages } from './messages.ts';
import { BLOBS_PATH, UPLOADS_PATH, type UploadedFile, type UploadShelf } from './uploads.ts';

/**
 * The playground's HTTP side on node:http: the page and its script and style (files beside this one,
 * nothing fetched from elsewhere, enforced by a Content-Security-Policy), a JSON API for posts, buttons
 * and history, Server-Sent Events for live updates, and the stored images. Every handler catches its own
 * errors, so one bad request never stops the server for other pages.
 */

export interface ServerDeps {
  store: Store;
  messages: PlaygroundMessages;
  /** Resolves once the server knows its own address (uploads are fetched back from it); requests wait for it. */
  inbound: Promise<PlaygroundInbound>;
  uploads: UploadShelf;
  hub: EventHub;
  logger: Logger;
  communityId: string;
  channelId: string;
  /** Largest image accepted, in bytes and pixels (the core's fetch guard's limits). */
  limits: { maxBytes: number; maxPixels: number };
  /**
   * Whether a request's Host header names this server. Other names are refused, so a web page whose DNS
   * name is pointed at 127.0.0.1 (DNS rebinding) can't read or post through a visitor's browser.
   */
  hostAllowed(host: string | undefined): boolean;
  /**
   * GILL_PLAYGROUND_TOKEN: when set, every request must carry it (the TOKEN_HEADER header, or the cookie
   * that opening `/?token=…` sets), since whoever reaches the playground may change its settings.
   */
  token?: string;
}

/** The header, and the cookie, that carry GILL_PLAYGROUND_TOKEN. */
export const TOKEN_HEADER = 'x-gill-playground-token';
export const TOKEN_COOKIE = 'gill_playground_token';

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/** Whether a listen address is reachable from this machine only. */
export function isLoopback(host: string): boolean {
  if (host.toLowerCase() === 'localhost') return true;
  const address = host.replace(/^\[(.*)\]$/, '$1');
  const family = isIP(address);
  return family !== 0 && LOOPBACK.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value).digest();
}

/** Compares in constant time, so the token can't be guessed a character at a time. */
function sameToken(given: string | undefined, token: string): boolean {
  return given !== undefined && timingSafeEqual(digest(given), digest(token));
}

function cookie(request: IncomingMessage, name: string): string | undefined {
  for (const part of (request.headers.cookie ?? '').split(';')) {
    const [key, ...value] = part.trim().split('=');
    if (key === name) return decodeURIComponent(value.join('='));
  }
  return undefined;
}

const PUBLIC_DIR = path.join(import.meta.dirname, 'public');
const ASSETS: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  ...Object.fromEntries(
    // The page's ES modules (public/app.js imports the others).
    ['app.js', 'api.js', 'composer.js', 'dom.js', 'views.js'].map((file) => [
      `/${file}`,
      { file, type: 'text/javascript; charset=utf-8' },
    ]),
  ),
  '/app.css': { file: 'app.css', type: 'text/css; charset=utf-8' },
};

/** The page may load only what this server serves; images also as data: (progress previews) and blob: (upload previews). */
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const CHANNEL_MESSAGES = 200;
const THREAD_MESSAGES = 500;
const JSON_LIMIT = 64 * 1024;
/** Room for the text and form framing next to the images. */
const FORM_OVERHEAD = 256 * 1024;

/** Posts must carry this header: a page of another site can't set it without CORS, which is not offered. */
export const REQUEST_HEADER = 'x-gill-playground';

class BodyTooLarge extends Error {}

function send(response: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'cache-control': 'no-store',
  });
  response.end(text);
}

/** Reads the body up to `limit` bytes; past it, the rest is read and dropped so the answer still arrives. */
function readBody(request: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(request.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) {
      request.resume();
      reject(new BodyTooLarge());
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    request.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) over = true;
      else chunks.push(chunk);
    });
    request.on('end', () => (over ? reject(new BodyTooLarge()) : resolve(Buffer.concat(chunks))));
    request.on('error', reject);
  });
}

function formatMiB(bytes: number): string {
  return `${Math.round((bytes / (1024 * 1024)) * 10) / 10} MiB`;
}

export function createPlaygroundServer(deps: ServerDeps): Server {
  const { messages, hub, logger, uploads } = deps;
  const formLimit = MAX_FILES * deps.limits.maxBytes + FORM_OVERHEAD;
  const assets = new Map<string, Promise<Buffer>>();
  const asset = (file: string) => {
    let content = assets.get(file);
    if (!content) {
      content = readFile(path.join(PUBLIC_DIR, file));
      assets.set(file, content);
    }
    return content;
  };

  async function postMessage(request: IncomingMessage, response: ServerResponse) {
    const type = String(request.headers['content-type'] ?? '');
    if (!type.startsWith('multipart/form-data'))
      throw new PlaygroundRefusal('Send the message as a form.', 415);
    let body: Buffer;
    try {
      body = await readBody(request, formLimit);
    } catch (error) {
      if (!(error instanceof BodyTooLarge)) throw error;
      throw new PlaygroundRefusal(
        `The upload is too large: at most ${MAX_FILES} images of up to ${formatMiB(deps.limits.maxBytes)} each.`,
        413,
      );
    }
    let form: FormData;
    try {
      form = await new Response(
        new Uint8Array(body.buffer as ArrayBuffer, body.byteOffset, body.byteLength),
        { headers: { 'content-type': type } },
      ).formData();
    } catch {
      throw new PlaygroundRefusal('The form could not be read.');
    }
    const files: UploadedFile[] = [];
    for (const value of form.getAll('files')) {
      if (typeof value === 'string') continue;
      files.push({
        name: value.name || 'image',
        type: value.type,
        bytes: new Uint8Array(await value.arrayBuffer()),
      });
    }
    const threadId = form.get('threadId');
    const inbound = await deps.inbound;
    const result = await inbound.post({
      text: String(form.get('text') ?? ''),
      ...(typeof threadId === 'string' && threadId ? { threadId } : {}),
      clientKey: checkClientKey(form.get('clientKey')),
      user: checkUser({ id: form.get('userId'), name: form.get('userName') }),
      files,
    });
    send(response, 200, result);
  }

  async function pressButton(request: IncomingMessage, response: ServerResponse) {
    let input: Record<string, unknown>;
    try {
      input = JSON.parse((await readBody(request, JSON_LIMIT)).toString('utf8'));
    } catch (error) {
      if (error instanceof BodyTooLarge) throw new PlaygroundRefusal('The request is too large.', 413);
      throw new PlaygroundRefusal('The request is not JSON.');
    }
    const inbound = await deps.inbound;
    const result = await inbound.press({
      customId: input.customId,
      clickKey: checkClientKey(input.clickKey),
      user: checkUser({ id: input.userId, name: input.userName }),
    });
    send(response, 200, result);
  }

  async function serveBlob(hash: string, response: ServerResponse) {
    const blob = /^[0-9a-f]{64}$/.test(hash) ? await deps.store.blobs.get(hash) : null;
    if (!blob?.mime.startsWith('image/')) return send(response, 404, { error: 'No such image.' });
    response.writeHead(200, {
      'content-type': blob.mime,
      'content-length': blob.bytes.byteLength,
      // Content-addressed: the bytes under a hash never change.
      'cache-control': 'public, max-age=31536000, immutable',
      'x-content-type-options': 'nosniff',
    });
    response.end(Buffer.from(blob.bytes));
  }

  function serveUpload(token: string, response: ServerResponse) {
    const file = uploads.take(token);
    if (!file) return send(response, 404, { error: 'No such upload.' });
    response.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': file.bytes.byteLength,
    });
    response.end(Buffer.from(file.bytes));
  }

  async function route(request: IncomingMessage, response: ServerResponse, url: URL) {
    const method = request.method ?? 'GET';
    const pathname = url.pathname;
    if (method === 'GET' && ASSETS[pathname]) {
      const { file, type } = ASSETS[pathname];
      const content = await asset(file);
      response.writeHead(200, {
        'content-type': type,
        'cache-control': 'no-cache',
        'x-content-type-options': 'nosniff',
        ...(file.endsWith('.html')
          ? { 'content-security-policy': CSP, 'referrer-policy': 'no-referrer' }
          : {}),
      });
      return response.end(content);
    }
    if (method === 'GET' && pathname.startsWith(BLOBS_PATH))
      return serveBlob(pathname.slice(BLOBS_PATH.length), response);
    if (method === 'GET' && pathname.startsWith(UPLOADS_PATH))
      return serveUpload(pathname.slice(UPLOADS_PATH.length), response);
    if (method === 'GET' && pathname === '/api/events') return hub.attach(response);
    if (method === 'GET' && pathname === '/api/state') {
      return send(response, 200, {
        botName: BOT_NAME,
        channel: { id: deps.channelId, name: deps.channelId },
        limits: { ...deps.limits, maxFiles: MAX_FILES, maxChars: MAX_MESSAGE_CHARS },
      });
    }
    if (method === 'GET' && pathname === '/api/channel') {
      return send(response, 200, {
        messages: await messages.channel(deps.communityId, deps.channelId, CHANNEL_MESSAGES),
      });
    }
    const thread = /^\/api\/threads\/([^/]+)$/.exec(pathname);
    if (method === 'GET' && thread) {
      const list = await messages.thread(thread[1]!, THREAD_MESSAGES);
      if (!list.length) return send(response, 404, { error: 'That thread does not exist.' });
      return send(response, 200, { messages: list });
    }
    if (method === 'POST' && (pathname === '/api/messages' || pathname === '/api/buttons')) {
      if (request.headers[REQUEST_HEADER] !== '1') {
        request.resume();
        return send(response, 403, { error: 'Requests must come from the playground page.' });
      }
      return pathname === '/api/messages' ? postMessage(request, response) : pressButton(request, response);
    }
    request.resume();
    send(response, 404, { error: 'Not found.' });
  }

  /** With a token: true when the request may go on; otherwise it has been answered (401, or the cookie set). */
  function admitted(request: IncomingMessage, response: ServerResponse, url: URL): boolean {
    const token = deps.token;
    // Uploads are fetched back by the bot itself, each under a one-time random name.
    if (!token || url.pathname.startsWith(UPLOADS_PATH)) return true;
    const offered = url.searchParams.get('token');
    if (request.method === 'GET' && url.pathname === '/' && offered !== null) {
      request.resume();
      if (!sameToken(offered, token)) {
        send(response, 401, { error: 'That is not this playground’s token.' });
        return false;
      }
      // The page's own requests carry it from now on; the token leaves the address bar.
      response.writeHead(303, {
        location: '/',
        'set-cookie': `${TOKEN_COOKIE}=${encodeURIComponent(token)}; HttpOnly; SameSite=Strict; Path=/`,
        'cache-control': 'no-store',
      });
      response.end();
      return false;
    }
    const header = request.headers[TOKEN_HEADER];
    if (sameToken(typeof header === 'string' ? header : cookie(request, TOKEN_COOKIE), token)) return true;
    request.resume();
    send(response, 401, {
      error: 'This playground needs its token: open it once at /?token=<GILL_PLAYGROUND_TOKEN>.',
    });
    return false;
  }

  const server = createServer((request, response) => {
    if (!deps.hostAllowed(request.headers.host)) {
      request.resume();
      return send(response, 421, { error: 'This server answers only to its own address.' });
    }
    let url: URL;
    try {
      url = new URL(request.url ?? '/', 'http://playground');
    } catch {
      return send(response, 400, { error: 'Bad URL.' });
    }
    if (!admitted(request, response, url)) return;
    route(request, response, url).catch((error: unknown) => {
      if (error instanceof PlaygroundRefusal) {
        logger.info({ path: url.pathname, status: error.status, reason: error.message }, 'request refused');
        request.resume();
        if (!response.headersSent) send(response, error.status, { error: error.message });
        return;
      }
      logger.error({ err: error, path: url.pathname }, 'playground request failed');
      request.resume();
      if (!response.headersSent) {
        send(response, 500, {
          error: 'Something went wrong on the server; it was logged. Please try again.',
        });
      } else response.end();
    });
  });
  // Large uploads from a slow page must not hold a connection forever.
  server.requestTimeout = 120_000;
  return server;
}
