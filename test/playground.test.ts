import { createHash, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { type Browser, chromium, type Page } from 'playwright-core';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PlaygroundHandle, seedGallery, startPlayground } from '../src/bots/playground/index.ts';
import type { Engine, JobContext, JobPayload, JobResult, ResultImage } from '../src/jobs.ts';
import { createLogger } from '../src/log.ts';
import { MemoryJobQueue } from '../src/queue/memory.ts';
import type { WorkerHandle } from '../src/queue/queue.ts';
import { runJobs } from '../src/queue/worker.ts';
import { connect } from '../src/store/index.ts';
import type { Store } from '../src/store/types.ts';
import { JobGate } from './support/job-gate.ts';
import { serviceAvailable } from './support/services.ts';

/**
 * The playground end to end in headless Chromium: the real server, core, in-process queue, worker loop,
 * delivery and embedded store, with a scripted engine (deterministic answers, decisions and images; the
 * model itself is tested in the engine suites). Screenshots go to test-artifacts/.
 */

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = path.resolve('test-artifacts');
const chromiumUp = await serviceAvailable('Chromium (for the playground browser test)', async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is not installed (Debian package "chromium")`);
});

/** A deterministic vector for bytes or text, so retrieval is repeatable without a model. */
function embed(input: Uint8Array | string): Float32Array {
  const digest = createHash('sha256').update(input).digest();
  return Float32Array.from(digest.subarray(0, 16), (b) => b / 255 - 0.5);
}

async function solidPng(seed: number): Promise<Buffer> {
  const background = { r: (seed * 53) % 256, g: (seed * 97) % 256, b: (seed * 29) % 256 };
  return sharp({ create: { width: 64, height: 64, channels: 3, background } })
    .png()
    .toBuffer();
}

/**
 * Answers like the GILL engine does, from a script: chat decides to generate unless told to retrieve.
 * `hold` parks every job but indexing at its start until `release`, so later requests wait in the queue.
 */
class ScriptedEngine implements Engine {
  /** The kind of every job run, in order. */
  readonly runs: JobPayload['kind'][] = [];
  private readonly gate = new JobGate();

  constructor(private readonly store: Store) {}

  hold(): void {
    this.gate.hold();
  }

  release(): void {
    this.gate.release();
  }

  private async generate(seed: number, ctx: JobContext): Promise<ResultImage> {
    for (let step = 1; step <= 3; step++) {
      ctx.progress({
        stage: 'generating',
        step,
        steps: 3,
        previewPng: (await solidPng(step)).toString('base64'),
      });
      await new Promise((resolve) => setTimeout(resolve, 150));
    }
    const png = await solidPng(seed);
    const hash = await this.store.blobs.put(png, 'image/png');
    return { kind: 'generated', hash, mime: 'image/png', width: 64, height: 64, score: 0.31 };
  }

  private async retrieve(
    payload: JobPayload,
    query: string,
    k: number,
    exclude: string[],
  ): Promise<ResultImage[]> {
    const community = await this.store.communities.ensure(payload.community);
    const found = await this.store.images.search(community.id, embed(query), k, exclude);
    return found.map((row) => ({
      kind: 'retrieved',
      hash: row.hash,
      mime: row.mime,
      width: row.width,
      height: row.height,
      score: row.score,
      source: {
        imageId: row.id,
        permalink: row.permalink,
        authorId: row.authorId,
        channelId: row.channelId,
        messageId: row.messageId,
      },
    }));
  }

  async run(payload: JobPayload, ctx: JobContext): Promise<JobResult> {
    this.runs.push(payload.kind);
    await this.gate.pass(payload.kind);
    const seed = 'seed' in payload && payload.seed !== undefined ? payload.seed : 7;
    switch (payload.kind) {
      case 'index': {
        const image = await this.store.images.get(payload.imageId);
        const blob = image && (await this.store.blobs.get(image.hash));
        if (!image || !blob) throw new Error(`image ${payload.imageId} is gone`);
        await this.store.images.setEmbedding(image.id, embed(blob.bytes));
        return { kind: 'index', text: '', images: [], decision: null, notes: [] };
      }
      case 'find':
        ctx.progress({ stage: 'retrieving' });
        return {
          kind: 'find',
          text: '',
          images: await this.retrieve(payload, payload.query, payload.k, payload.excludeImageIds),
          decision: null,
          notes: [],
        };
      case 'imagine':
        return {
          kind: 'imagine',
          text: '',
          images: [await this.generate(seed, ctx)],
          decision: null,
          notes: [],
          seed,
        };
      case 'chat': {
        ctx.progress({ stage: 'thinking' });
        const texts = payload.context.filter((item) => item.type === 'text');
        const images = payload.context.filter((item) => item.type === 'image').length;
        const last = texts.at(-1)?.text ?? '';
        const retrieve = payload.imageMode === 'retrieve';
        return {
          kind: 'chat',
          text: `You said “${last}” and showed ${images} image${images === 1 ? '' : 's'}. Here is a picture.`,
          images: retrieve
            ? await this.retrieve(payload, last, 1, payload.excludeImageIds)
            : [await this.generate(seed, ctx)],
          decision: retrieve
            ? { choice: 'retrieve', pGenerate: 0.27, pRetrieve: 0.73 }
            : { choice: 'generate', pGenerate: 0.73, pRetrieve: 0.27 },
          notes: [],
          seed,
        };
      }
    }
  }

  async close(): Promise<void> {}
}

describe.skipIf(!chromiumUp)('playground in a browser', () => {
  const logger = createLogger('warn');
  let dataDir: string;
  let store: Store;
  let queue: MemoryJobQueue;
  let engine: ScriptedEngine;
  let worker: WorkerHandle;
  let playground: PlaygroundHandle;
  let browser: Browser;
  let page: Page;
  const requested: string[] = [];

  const start = () =>
    startPlayground({
      config: { GILL_HOST: '127.0.0.1', GILL_PORT: 7860 },
      store,
      queue,
      logger,
      listen: { port: 0 },
      sweepIntervalMs: 250,
    });

  beforeAll(async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    dataDir = await mkdtemp(path.join(tmpdir(), 'gill-playground-'));
    store = await connect({ dataDir, DATABASE_URL: undefined });
    queue = new MemoryJobQueue({ logger });
    engine = new ScriptedEngine(store);
    worker = runJobs({ queue, store, engine, logger });
    playground = await start();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    page.on('request', (request) => requested.push(request.url()));
  });

  afterAll(async () => {
    await browser?.close();
    await playground?.stop();
    await worker?.close();
    await queue?.close();
    await store?.close();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  /** The newest bot reply in the open thread, once it is finished. */
  const lastReply = () => page.locator('#thread-messages article.msg.bot:not(.pending)').last();

  it('seeds the emoji gallery once', async () => {
    const first = await seedGallery({ store, queue, logger, count: 24 });
    expect(first).toEqual({ emoji: 24, added: 24, jobs: 24 });
    const again = await seedGallery({ store, queue, logger, count: 24 });
    expect(again).toEqual({ emoji: 24, added: 0, jobs: 0 });
    // The index jobs run through the queue; wait until the gallery is searchable.
    const community = await store.communities.ensure({ platform: 'playground', externalId: 'local' });
    await expect
      .poll(async () => (await store.images.search(community.id, embed('x'), 30)).length, { timeout: 20_000 })
      .toBe(24);
  });

  it('answers a mention with an image: text, a generated image and the decision', async () => {
    await page.goto(playground.url);
    await expect.poll(() => page.locator('#connection').textContent()).toBe('live');
    const composer = page.locator('#channel-composer');
    await composer.locator('input[type=file]').setInputFiles({
      name: 'square.png',
      mimeType: 'image/png',
      buffer: await solidPng(3),
    });
    await expect.poll(() => composer.locator('.chip').count()).toBe(1);
    await composer.locator('textarea').fill('@gill what colour is this?');
    await composer.locator('textarea').press('Enter');

    const thread = page.locator('#thread-pane');
    await thread.waitFor({ state: 'visible' });
    await page.locator('#thread-messages article.msg.user img.attachment').first().waitFor();
    await page.locator('#thread-messages .progress').first().waitFor({ timeout: 10_000 });
    const reply = lastReply();
    await reply.waitFor({ timeout: 20_000 });
    await expect.poll(() => reply.locator('.text').textContent()).toContain('what colour is this?');
    expect(await reply.locator('.text').textContent()).toContain('showed 1 image');
    expect(await reply.locator('figure.result[data-kind=generated] .kind').textContent()).toBe('Generated');
    expect(await reply.locator('.decision').textContent()).toContain('generate 73% · retrieve 27%');
    expect(await reply.locator('.buttons button').allTextContents()).toEqual([
      'Regenerate',
      'Retrieve instead',
    ]);
    await page.screenshot({ path: path.join(ARTIFACTS, 'playground-mention.png') });

    await reply.getByRole('button', { name: 'Retrieve instead' }).click();
    await expect
      .poll(() => page.locator('#thread-messages article.msg.bot:not(.pending)').count(), { timeout: 20_000 })
      .toBe(2);
    const retrieved = lastReply();
    expect(await retrieved.locator('.header').textContent()).toContain('pressed “Retrieve instead”');
    expect(await retrieved.locator('.decision').textContent()).toContain('retrieve 73%');
    const figure = retrieved.locator('figure.result[data-kind=retrieved]');
    expect(await figure.locator('.kind').textContent()).toBe('Retrieved');
    expect(await figure.locator('a.source').getAttribute('href')).toMatch(
      /^https:\/\/unicode\.org\/emoji\/charts\/full-emoji-list\.html#[0-9a-f_]+$/,
    );
    await page.screenshot({ path: path.join(ARTIFACTS, 'playground-retrieve-instead.png') });
  });

  it('/find returns gallery images, each marked retrieved and linked to its source', async () => {
    const composer = page.locator('#channel-composer');
    await composer.locator('textarea').fill('/find a smiling face');
    await composer.locator('textarea').press('Enter');
    await expect
      .poll(() => page.locator('#thread-messages article.msg.user .text').first().textContent(), {
        timeout: 10_000,
      })
      .toBe('/find a smiling face');
    const reply = lastReply();
    await expect.poll(() => reply.locator('figure.result').count(), { timeout: 20_000 }).toBe(4);
    expect(await reply.locator('figure.result[data-kind=retrieved]').count()).toBe(4);
    expect(await reply.locator('figure.result .title').count()).toBe(4);
    expect(await reply.locator('a.source').count()).toBe(4);
    expect(await reply.locator('.buttons button').allTextContents()).toEqual([
      'More like this',
      'Generate instead',
    ]);
    // Every image shown is served by the playground itself.
    for (const src of await reply
      .locator('img.result-image')
      .evaluateAll((imgs) => imgs.map((i) => (i as HTMLImageElement).src))) {
      expect(src.startsWith(playground.url)).toBe(true);
    }
    await page.screenshot({ path: path.join(ARTIFACTS, 'playground-find.png') });
  });

  it('refuses a non-image upload, an empty and an over-long message, with a message on the page', async () => {
    const composer = page.locator('#channel-composer');
    const error = composer.locator('.error');
    const before = await page.locator('#channel-messages article').count();

    await composer.locator('input[type=file]').setInputFiles({
      name: 'notes.txt',
      mimeType: 'text/plain',
      buffer: Buffer.from('not a picture'),
    });
    await composer.locator('textarea').fill('here is my file');
    await composer.locator('textarea').press('Enter');
    await expect.poll(() => error.textContent()).toContain('"notes.txt" is not an image');
    await page.screenshot({ path: path.join(ARTIFACTS, 'playground-refused-upload.png') });
    await composer.locator('.chip button').click();

    await composer.locator('textarea').fill('   ');
    await composer.locator('textarea').press('Enter');
    await expect.poll(() => error.textContent()).toContain('The message is empty');

    await composer.locator('textarea').fill('a'.repeat(4001));
    await composer.locator('textarea').press('Enter');
    await expect.poll(() => error.textContent()).toContain('the limit is 4,000');
    expect(await page.locator('#channel-messages article').count()).toBe(before);

    // The server goes on serving: a plain post right after is shown.
    await composer.locator('textarea').fill('still here');
    await composer.locator('textarea').press('Enter');
    await expect.poll(() => page.locator('#channel-messages article').count()).toBe(before + 1);
    expect(await error.isHidden()).toBe(true);
  });

  it('refuses a damaged image and an upload over the size limit', async () => {
    const post = (file: Blob, name: string) => {
      const form = new FormData();
      form.set('text', 'look');
      form.set('clientKey', randomUUID());
      form.set('userId', 'tester');
      form.append('files', file, name);
      return fetch(`${playground.url}api/messages`, {
        method: 'POST',
        headers: { 'x-gill-playground': '1' },
        body: form,
      });
    };
    const png = await solidPng(9);
    const damaged = await post(
      new Blob([new Uint8Array(png.subarray(0, 60))], { type: 'image/png' }),
      'cut.png',
    );
    expect(await damaged.json()).toEqual({
      error: '"cut.png" looks like a png image but is damaged or truncated.',
    });
    expect(damaged.status).toBe(415);
    const huge = await post(new Blob([new Uint8Array(11 * 1024 * 1024)], { type: 'image/png' }), 'huge.png');
    expect(huge.status).toBe(413);
    expect((await huge.json()).error).toMatch(/"huge\.png" is 11 MiB; images up to 10 MiB are read/);
    const tooWide = await post(
      new Blob(
        [
          new Uint8Array(
            await sharp({ create: { width: 5000, height: 4000, channels: 3, background: '#fff' } })
              .png()
              .toBuffer(),
          ),
        ],
        {
          type: 'image/png',
        },
      ),
      'wide.png',
    );
    expect(tooWide.status).toBe(400);
    expect((await tooWide.json()).error).toContain('5000×4000 pixels');
    const foreign = await fetch(`${playground.url}api/messages`, { method: 'POST', body: new FormData() });
    expect(foreign.status).toBe(403);
    // A script that leaves out clientKey (or sends a malformed one) is told which field and its format.
    for (const clientKey of [null, 'short', 'has spaces in it']) {
      const form = new FormData();
      form.set('text', 'hello');
      form.set('userId', 'tester');
      if (clientKey !== null) form.set('clientKey', clientKey);
      const keyless = await fetch(`${playground.url}api/messages`, {
        method: 'POST',
        headers: { 'x-gill-playground': '1' },
        body: form,
      });
      expect(keyless.status).toBe(400);
      expect((await keyless.json()).error).toMatch(/no valid clientKey \(8 to 64 letters, digits, _ or -/);
    }
    const anonymous = new FormData();
    anonymous.set('text', 'hello');
    anonymous.set('clientKey', randomUUID());
    const noUser = await fetch(`${playground.url}api/messages`, {
      method: 'POST',
      headers: { 'x-gill-playground': '1' },
      body: anonymous,
    });
    expect(noUser.status).toBe(400);
    expect((await noUser.json()).error).toMatch(/no valid userId \(1 to 64 letters/);
  });

  it('shows user text as text, never as markup', async () => {
    const composer = page.locator('#channel-composer');
    await composer.locator('textarea').fill('<img src=x onerror="window.__xss=1"><b>bold?</b>');
    await composer.locator('textarea').press('Enter');
    const last = page.locator('#channel-messages article.msg.user').last();
    await expect
      .poll(() => last.locator('.text').textContent())
      .toBe('<img src=x onerror="window.__xss=1"><b>bold?</b>');
    expect(await last.locator('.text img, .text b').count()).toBe(0);
    expect(await page.evaluate(() => (window as unknown as { __xss?: number }).__xss)).toBeUndefined();
  });

  it('keeps the channel and replies across a restart, one reply per job', async () => {
    await playground.stop();
    playground = await start();
    await page.goto(playground.url);
    await expect.poll(() => page.locator('#connection').textContent()).toBe('live');
    const roots = await page.locator('#channel-messages article .text').allTextContents();
    expect(roots).toContain('@gill what colour is this?');
    expect(roots).toContain('/find a smiling face');
    await page
      .locator('#channel-messages article', { hasText: '@gill what colour' })
      .getByRole('button', { name: /repl/ })
      .click();
    await expect.poll(() => page.locator('#thread-messages article.msg.bot').count()).toBe(2);
    await page.screenshot({ path: path.join(ARTIFACTS, 'playground-after-restart.png') });

    const perJob = await store.sql.query<{ job_id: string; n: number }>(
      'SELECT job_id::text, count(*)::int AS n FROM playground_messages WHERE job_id IS NOT NULL GROUP BY job_id',
    );
    expect(perJob.length).toBe(3);
    expect(perJob.every((row) => row.n === 1)).toBe(true);
    const undelivered = await store.jobs.listUndelivered('playground', 100);
    expect(undelivered.filter((job) => job.kind !== 'index')).toEqual([]);
  });

  it('Cancel on a progress message: the asker cancels a waiting request, nobody else may', async () => {
    const name = page.locator('#user-name');
    await name.fill('alice');
    await name.dispatchEvent('change');
    engine.hold();
    const stranger = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    try {
      // A mention takes the only worker and stays there, so the next request waits in the queue.
      const runsBefore = engine.runs.length;
      const openThread = () => new URL(page.url()).searchParams.get('thread');
      const previousThread = openThread();
      const composer = page.locator('#channel-composer');
      await composer.locator('textarea').fill('@gill first in line');
      await composer.locator('textarea').press('Enter');
      // The page opens the new thread (another one may be open from before).
      await expect.poll(openThread, { timeout: 10_000 }).not.toBe(previousThread);
      const threadId = openThread()!;
      await expect.poll(() => engine.runs.length, { timeout: 10_000 }).toBe(runsBefore + 1);
      const threadComposer = page.locator('#thread-composer');
      await threadComposer.locator('textarea').fill('/imagine wait for me');
      await threadComposer.locator('textarea').press('Enter');
      const pending = page.locator('#thread-messages article.msg.bot.pending');
      await expect.poll(() => pending.count(), { timeout: 10_000 }).toBe(2);
      const waiting = pending.last();
      await expect.poll(() => waiting.locator('.progress-text').textContent()).toBe('⏳ Next in line…');
      const jobId = (await waiting.getAttribute('data-job-id'))!;
      expect(await waiting.locator('button.cancel').getAttribute('data-custom-id')).toBe(
        `gill:cancel:${jobId}`,
      );
      expect(await store.jobs.get(jobId)).toMatchObject({ status: 'queued' });
      await page.screenshot({ path: path.join(ARTIFACTS, 'playground-cancel-button.png') });

      // Someone else (another page, so another user) is refused, only on their page, and nothing changes.
      const other = await stranger.newPage();
      await other.goto(`${playground.url}?thread=${threadId}`);
      await expect.poll(() => other.locator('#connection').textContent()).toBe('live');
      await other.locator('#user-name').fill('bob');
      await other.locator('#user-name').dispatchEvent('change');
      const theirView = other.locator(`#thread-messages article[data-job-id="${jobId}"]`);
      await theirView.locator('button.cancel').click();
      await expect
        .poll(() => other.locator('#thread-composer .notice').textContent())
        .toContain('Only alice can cancel this.');
      expect(await page.locator('#thread-composer .notice').isHidden()).toBe(true);
      expect(await store.jobs.get(jobId)).toMatchObject({ status: 'queued' });
      expect(await queue.position(jobId)).toBe(0);
      expect(await waiting.locator('button.cancel').count()).toBe(1);

      // The asker cancels: the job leaves the queue, and every page shows it cancelled, without the button.
      await waiting.locator('button.cancel').click();
      const cancelled = page.locator(`#thread-messages article.msg.bot.cancelled[data-job-id="${jobId}"]`);
      await cancelled.waitFor({ timeout: 10_000 });
      expect(await cancelled.locator('.text').textContent()).toBe('🚫 Cancelled.');
      expect(await cancelled.locator('button').count()).toBe(0);
      await other.locator(`#thread-messages article.msg.bot.cancelled[data-job-id="${jobId}"]`).waitFor();
      expect(await store.jobs.get(jobId)).toMatchObject({ status: 'cancelled' });
      expect(await queue.position(jobId)).toBeNull();
      await page.screenshot({ path: path.join(ARTIFACTS, 'playground-cancelled.png') });

      // A second press changes nothing.
      const again = await page.evaluate(async (customId) => {
        const user = JSON.parse(localStorage.getItem('gill.user') ?? '{}');
        const response = await fetch('/api/buttons', {
          method: 'POST',
          headers: { 'x-gill-playground': '1', 'content-type': 'application/json' },
          body: JSON.stringify({
            customId,
            clickKey: 'second-press-1',
            userId: user.id,
            userName: user.name,
          }),
        });
        return response.json();
      }, `gill:cancel:${jobId}`);
      expect(again).toEqual({ notice: '⚠️ This request was already cancelled.' });

      // The running job finishes and is delivered without a Cancel button; the cancelled one never runs.
      engine.release();
      const reply = page.locator('#thread-messages article.msg.bot:not(.pending):not(.cancelled)').last();
      await expect
        .poll(() => reply.locator('.text').textContent(), { timeout: 20_000 })
        .toContain('first in line');
      expect(await reply.locator('button.cancel').count()).toBe(0);
      expect(await reply.locator('.buttons button').allTextContents()).toEqual([
        'Regenerate',
        'Retrieve instead',
      ]);
      await new Promise((resolve) => setTimeout(resolve, 800));
      expect(engine.runs.slice(runsBefore)).toEqual(['chat']);
      expect(await cancelled.locator('.text').textContent()).toBe('🚫 Cancelled.');
      const [row] = await store.sql.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM playground_messages WHERE job_id = $1',
        [jobId],
      );
      expect(row?.n).toBe(1);
      expect((await store.jobs.get(jobId))?.deliveredAt).toBeNull();
    } finally {
      engine.release();
      await stranger.close();
    }
  });

  it('once a request of its kind has run, a waiting one says about how long it will take', async () => {
    await page.goto(playground.url);
    await expect.poll(() => page.locator('#connection').textContent()).toBe('live');
    const name = page.locator('#user-name');
    await name.fill('carol');
    await name.dispatchEvent('change');
    const openThread = () => new URL(page.url()).searchParams.get('thread');
    const previousThread = openThread();
    const composer = page.locator('#channel-composer');
    await composer.locator('textarea').fill('@gill measure this');
    await composer.locator('textarea').press('Enter');
    await expect.poll(openThread, { timeout: 10_000 }).not.toBe(previousThread);
    const finished = page.locator('#thread-messages article.msg.bot:not(.pending)');
    // A chat turn runs to the end, so its kind has been measured.
    await expect.poll(() => finished.count(), { timeout: 20_000 }).toBe(1);
    engine.hold();
    try {
      // The next turn takes the only worker and stays there, so the one after it waits in the queue.
      const runsBefore = engine.runs.length;
      const threadComposer = page.locator('#thread-composer');
      await threadComposer.locator('textarea').fill('keep the worker busy');
      await threadComposer.locator('textarea').press('Enter');
      await expect.poll(() => engine.runs.length, { timeout: 10_000 }).toBe(runsBefore + 1);
      await threadComposer.locator('textarea').fill('wait with an estimate');
      await threadComposer.locator('textarea').press('Enter');
      const pending = page.locator('#thread-messages article.msg.bot.pending');
      await expect.poll(() => pending.count(), { timeout: 10_000 }).toBe(2);
      await expect
        .poll(() => pending.last().locator('.progress-text').textContent(), { timeout: 10_000 })
        .toMatch(/^⏳ Next in line… \(ready in about \d+ s\)$/);
      await page.screenshot({ path: path.join(ARTIFACTS, 'playground-eta.png') });
    } finally {
      engine.release();
    }
    await expect.poll(() => finished.count(), { timeout: 20_000 }).toBe(3);
  });

  it('loads nothing from outside the server', () => {
    const origin = new URL(playground.url).origin;
    const outside = requested.filter(
      (url) => !url.startsWith('data:') && !url.startsWith('blob:') && new URL(url).origin !== origin,
    );
    // The port changes on restart, so both servers count as this machine.
    expect(outside.every((url) => new URL(url).hostname === '127.0.0.1')).toBe(true);
  });
});
