import http from 'node:http';
import type { AddressInfo } from 'node:net';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createFetchGuard, FetchRefusedError, isPublicAddress } from '../src/bots/core/fetch-guard.ts';

/**
 * A file host cannot hold a turn and cannot be steered inward: the download has a total deadline, not only
 * an idle timeout (a loopback host dripping a byte every 400 ms, never silent long enough for the idle
 * timeout), and IPv6 ranges that reach IPv4 or private hosts count as non-public.
 */

/** Settles with the guard's refusal, or with a note when the download is still going after `ms`. */
async function outcome(promise: Promise<unknown>, ms: number): Promise<FetchRefusedError | string> {
  let timer: NodeJS.Timeout | undefined;
  const stillGoing = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve(`still downloading after ${ms} ms`), ms);
  });
  try {
    return await Promise.race([
      promise.then(
        () => 'downloaded',
        (error: unknown) => (error instanceof FetchRefusedError ? error : `failed: ${String(error)}`),
      ),
      stillGoing,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

describe('download deadline', () => {
  let server: http.Server;
  let origin: string;
  let png: Buffer;
  const drips = new Set<NodeJS.Timeout>();

  beforeAll(async () => {
    png = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#123456' } })
      .png()
      .toBuffer();
    server = http.createServer((req, res) => {
      if (req.url === '/drip.png' || req.url === '/redirected-drip') {
        if (req.url === '/redirected-drip') return res.writeHead(302, { location: '/drip.png' }).end();
        // A byte of a real PNG every 400 ms: the connection is never idle for long.
        res.writeHead(200, { 'content-type': 'image/png', 'content-length': String(png.length) });
        let sent = 0;
        const drip = setInterval(() => {
          if (sent < png.length) res.write(png.subarray(sent, ++sent));
        }, 400);
        drips.add(drip);
        res.on('close', () => {
          clearInterval(drip);
          drips.delete(drip);
        });
      } else if (req.url === '/silent.png') {
        // Accepts the request and never answers.
      } else if (req.url === '/quick.png') {
        res.writeHead(200, { 'content-type': 'image/png' }).end(png);
      } else res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    for (const drip of drips) clearInterval(drip);
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  it('gives up on a host that drips a byte every 400 ms, with a reason for the poster', async () => {
    const guard = createFetchGuard({ allowed: [origin], timeoutMs: 5_000, deadlineMs: 2_000 });
    const result = await outcome(guard.fetchImage(`${origin}/drip.png`, 'slow.png'), 10_000);
    expect(result).toBeInstanceOf(FetchRefusedError);
    expect((result as FetchRefusedError).reason).toBe('too_slow');
    expect((result as FetchRefusedError).message).toBe(
      '"slow.png": its host took longer than 2 s to send it, so it was not read',
    );
    // The connection is closed, so the host stops sending.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(drips.size).toBe(0);
  });

  it('counts redirects and a host that never answers against the same deadline', async () => {
    const guard = createFetchGuard({ allowed: [origin], timeoutMs: 60_000, deadlineMs: 1_500 });
    for (const file of ['/redirected-drip', '/silent.png']) {
      const result = await outcome(guard.fetchImage(`${origin}${file}`, 'late.png'), 10_000);
      expect(result, file).toBeInstanceOf(FetchRefusedError);
      expect((result as FetchRefusedError).reason, file).toBe('too_slow');
    }
  });

  it('still downloads from a prompt host', async () => {
    const guard = createFetchGuard({ allowed: [origin], deadlineMs: 2_000 });
    const image = await guard.fetchImage(`${origin}/quick.png`, 'quick.png');
    expect(image).toMatchObject({ mime: 'image/png', width: 8, height: 8 });
    expect(Buffer.from(image.bytes).equals(png)).toBe(true);
  });
});

describe('non-public addresses', () => {
  it('treats IPv6 ranges that embed, tunnel to or translate to IPv4, and site-local, as non-public', () => {
    for (const address of [
      '::7f00:1', // IPv4-compatible ::127.0.0.1
      '::a00:1', // ::10.0.0.1
      '::',
      '::1',
      '2002:7f00:1::1', // 6to4 for 127.0.0.1
      '2002:a9fe:a9fe::1', // 6to4 for 169.254.169.254
      '2001:0:4136:e378:8000:63bf:3fff:fdd2', // Teredo
      '64:ff9b::7f00:1', // NAT64 well-known prefix
      '64:ff9b:1::a00:1', // local-use NAT64
      'fec0::1', // site-local
      'fed0::1',
      'feff::1',
      '2001:db8::1', // documentation
      '100::1', // discard-only
      '192.0.2.10',
      '198.51.100.7',
      '203.0.113.200',
    ]) {
      expect(isPublicAddress(address), address).toBe(false);
    }
  });

  it('still treats public addresses as public', () => {
    for (const address of [
      '162.159.128.233',
      '2606:4700::6810:84e5',
      '2a00:1450:4001:80b::200e',
      '2001:4860:4860::8888',
      '2003::1',
    ]) {
      expect(isPublicAddress(address), address).toBe(true);
    }
  });
});
