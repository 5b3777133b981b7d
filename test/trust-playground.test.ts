import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PlaygroundHandle, startPlayground } from '../src/bots/playground/index.ts';
import { isLoopback, REQUEST_HEADER, TOKEN_COOKIE, TOKEN_HEADER } from '../src/bots/playground/server.ts';
import { ConfigError, loadConfig } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import { connect } from '../src/store/connect.ts';
import type { Store } from '../src/store/types.ts';

/**
 * The playground beyond loopback: whoever reaches it may change its settings, so on a GILL_HOST other
 * than loopback it starts only with GILL_PLAYGROUND_TOKEN, and then answers only requests carrying it.
 */

const TOKEN = 'a-long-random-playground-token';
const logger = createLogger('silent');
let dataDir: string;
let store: Store;
let queue: MemoryJobQueue;
const running: PlaygroundHandle[] = [];

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), 'gill-trust-playground-'));
  store = await connect({ dataDir, DATABASE_URL: undefined });
  queue = new MemoryJobQueue({ logger });
});

afterAll(async () => {
  for (const playground of running) await playground.stop();
  await queue?.close();
  await store?.close();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

async function start(env: Record<string, string>): Promise<PlaygroundHandle> {
  const config = loadConfig({ GILL_DATA_DIR: dataDir, ...env });
  const playground = await startPlayground({ config, store, queue, logger, listen: { port: 0 } });
  running.push(playground);
  return playground;
}

describe('the playground beyond loopback', () => {
  it('tells loopback from other addresses', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', 'localhost'])
      expect(isLoopback(host)).toBe(true);
    for (const host of ['0.0.0.0', '::', '192.168.1.5', '10.0.0.1', 'gill.example.org'])
      expect(isLoopback(host)).toBe(false);
  });

  it('refuses to start on a non-loopback GILL_HOST without GILL_PLAYGROUND_TOKEN', async () => {
    const refused = await start({ GILL_HOST: '0.0.0.0' }).then(
      () => null,
      (error: unknown) => error,
    );
    expect(refused).toBeInstanceOf(ConfigError);
    expect((refused as ConfigError).problems[0]).toMatch(
      /^GILL_PLAYGROUND_TOKEN: required when the playground listens beyond/,
    );
  });

  it('with the token set, answers only requests carrying it (header, or the cookie /?token= sets)', async () => {
    const playground = await start({ GILL_HOST: '0.0.0.0', GILL_PLAYGROUND_TOKEN: TOKEN });
    const base = playground.url.replace(/\/$/, '');
    expect((await fetch(`${base}/`)).status).toBe(401);
    expect((await fetch(`${base}/api/state`)).status).toBe(401);
    expect(
      (await fetch(`${base}/api/channel`, { headers: { [TOKEN_HEADER]: 'wrong-token-of-some-length' } }))
        .status,
    ).toBe(401);
    const anonymousPost = await fetch(`${base}/api/messages`, {
      method: 'POST',
      headers: { [REQUEST_HEADER]: '1' },
      body: new FormData(),
    });
    expect(anonymousPost.status).toBe(401);
    expect((await fetch(`${base}/?token=not-the-token`, { redirect: 'manual' })).status).toBe(401);

    expect((await fetch(`${base}/api/state`, { headers: { [TOKEN_HEADER]: TOKEN } })).status).toBe(200);
    const visit = await fetch(`${base}/?token=${TOKEN}`, { redirect: 'manual' });
    expect(visit.status).toBe(303);
    expect(visit.headers.get('location')).toBe('/');
    const setCookie = visit.headers.get('set-cookie') ?? '';
    expect(setCookie).toContain(`${TOKEN_COOKIE}=`);
    expect(setCookie).toContain('HttpOnly');
    expect(setCookie).toContain('SameSite=Strict');
    const withCookie = { cookie: setCookie.split(';')[0]! };
    expect((await fetch(`${base}/`, { headers: withCookie })).status).toBe(200);
    expect((await fetch(`${base}/api/channel`, { headers: withCookie })).status).toBe(200);
  });

  it('on loopback, with no token set, stays open to the person at this machine', async () => {
    const playground = await start({ GILL_HOST: '127.0.0.1' });
    expect((await fetch(`${playground.url}api/state`)).status).toBe(200);
  });
});
