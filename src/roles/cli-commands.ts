import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import pino from 'pino';
import type { Config } from '../config.ts';
import { loadBundle } from '../engine/bundle.ts';
import { encodePrompt, generate } from '../engine/diffusion/pipeline.ts';
import type { SchedulerName } from '../engine/diffusion/schedulers.ts';
import type { GillEngine } from '../engine/gill-engine.ts';
import { probeImage } from '../engine/images.ts';
import { createEngine } from '../engine/index.ts';
import { imageExtension } from '../image-types.ts';
import type { JobContext } from '../jobs.ts';
import {
  type CommunityRef,
  type JobProgress,
  type JobResult,
  parsePayload,
  UserInputError,
} from '../jobs.ts';
import { createLogger, type Logger } from '../log.ts';
import { connect } from '../store/index.ts';
import type { Store } from '../store/types.ts';

/**
 * `gill ask | imagine | index | find`: the engine from the command line, on the configured store
 * (embedded PGlite under the data dir unless DATABASE_URL is set). Results go to stdout, progress and
 * logs to stderr.
 */

const IMAGE_EXTENSIONS = new Set(['.png', '.jpg', '.jpeg', '.gif', '.webp']);

function stderrLogger(config: Config): Logger {
  return createLogger(config.GILL_LOG_LEVEL === 'info' ? 'warn' : config.GILL_LOG_LEVEL, pino.destination(2));
}

function cliCommunity(id: string | undefined): CommunityRef {
  return { platform: 'cli', externalId: id ?? 'local' };
}

function progressPrinter(): (p: JobProgress) => void {
  const interactive = process.stderr.isTTY;
  return (p) => {
    if (p.stage !== 'generating') return;
    if (interactive)
      process.stderr.write(`\rgenerating: step ${p.step}/${p.steps}${p.step === p.steps ? '\n' : ''}`);
  };
}

function jobContext(): JobContext {
  const controller = new AbortController();
  return { progress: progressPrinter(), signal: controller.signal };
}

async function withEngine<T>(
  config: Config,
  work: (engine: GillEngine, store: Store) => Promise<T>,
): Promise<T> {
  const logger = stderrLogger(config);
  const store = await connect(config, { logger });
  try {
    const engine = await createEngine(config, store, logger);
    try {
      return await work(engine, store);
    } finally {
      await engine.close();
    }
  } finally {
    await store.close();
  }
}

async function readImageFile(
  file: string,
): Promise<{ bytes: Buffer; mime: string; width: number; height: number }> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (error) {
    throw new UserInputError(`cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? error}`);
  }
  try {
    return { bytes, ...(await probeImage(bytes)) };
  } catch (error) {
    if (error instanceof UserInputError) throw new UserInputError(`${file}: ${error.message}`, error.code);
    throw error;
  }
}

function printNotes(notes: string[]): void {
  for (const note of notes) process.stdout.write(`note: ${note}\n`);
}

async function writeImages(result: JobResult, store: Store, outDir: string | undefined): Promise<void> {
  if (result.images.length === 0) return;
  if (!outDir) {
    process.stdout.write(`(${result.images.length} image(s) not saved: pass --out DIR to write them)\n`);
    return;
  }
  await mkdir(outDir, { recursive: true });
  for (const [i, image] of result.images.entries()) {
    const blob = await store.blobs.get(image.hash);
    if (!blob) throw new Error(`image ${image.hash} vanished from the store`);
    const file = path.join(outDir, `${image.kind}-${i + 1}.${imageExtension(image.mime) ?? 'bin'}`);
    await writeFile(file, blob.bytes);
    const origin = image.source ? ` (gallery image ${image.source.imageId})` : '';
    process.stdout.write(`image: ${file}  ${image.kind}, score ${image.score.toFixed(3)}${origin}\n`);
  }
}

/**
 * `gill ask ITEM...`: one conversation turn. Items are in order, each a text or `@path` to an image
 * (`@@text` is the literal text `@text`). Prints the reply, the decision, and writes images to --out.
 */
export async function runAsk(
  config: Config,
  items: string[],
  opts: { out?: string; community?: string; seed?: number },
): Promise<void> {
  type AskItem = { text: string } | { file: string; image: Awaited<ReturnType<typeof readImageFile>> };
  const context: AskItem[] = [];
  for (const item of items) {
    if (item.startsWith('@') && !item.startsWith('@@')) {
      const file = item.slice(1);
      context.push({ file, image: await readImageFile(file) });
    } else {
      context.push({ text: item.startsWith('@@') ? item.slice(1) : item });
    }
  }
  await withEngine(config, async (engine, store) => {
    const payloadContext = [];
    for (const item of context) {
      if ('text' in item) payloadContext.push({ type: 'text', role: 'user', text: item.text });
      else
        payloadContext.push({
          type: 'image',
          role: 'user',
          hash: await store.blobs.put(item.image.bytes, item.image.mime),
        });
    }
    const payload = parsePayload({
      kind: 'chat',
      community: cliCommunity(opts.community),
      context: payloadContext,
      seed: opts.seed,
    });
    const result = await engine.run(payload, jobContext());
    process.stdout.write(`${result.text || '(no text)'}\n`);
    if (result.decision) {
      const { choice, pGenerate, pRetrieve } = result.decision;
      process.stdout.write(
        `decision: ${choice} (p generate ${pGenerate.toFixed(3)}, p retrieve ${pRetrieve.toFixed(3)})\n`,
      );
    } else {
      process.stdout.write('decision: no image\n');
    }
    printNotes(result.notes);
    await writeImages(result, store, opts.out);
  });
}

/** `gill imagine PROMPT --out FILE`: the diffusion model alone on the prompt (no LM, no database). */
export async function runImagine(
  config: Config,
  prompt: string,
  opts: { out: string; steps?: number; seed?: number; guidance?: number; scheduler?: string },
): Promise<void> {
  if (!prompt.trim()) throw new UserInputError('the prompt is empty');
  if (opts.scheduler !== undefined && opts.scheduler !== 'ddim' && opts.scheduler !== 'dpm++') {
    throw new UserInputError(`--scheduler must be ddim or dpm++, got "${opts.scheduler}"`);
  }
  const bundle = await loadBundle(config.modelDir, {
    executionProvider: config.GILL_EXECUTION_PROVIDER,
    threads: config.GILL_THREADS,
  });
  try {
    const seed = opts.seed ?? Math.floor(Math.random() * 2 ** 31);
    const image = await generate({
      bundle,
      conditioning: await encodePrompt(bundle, prompt),
      seed,
      steps: opts.steps,
      guidance: opts.guidance,
      scheduler: opts.scheduler as SchedulerName | undefined,
      onStep: (step, steps) => progressPrinter()({ stage: 'generating', step, steps }),
    });
    await mkdir(path.dirname(path.resolve(opts.out)), { recursive: true });
    await writeFile(opts.out, image.png);
    process.stdout.write(
      `${opts.out}: ${image.width}×${image.height}, seed ${seed}, ${image.steps} ${image.scheduler} steps, guidance ${image.guidance}, ${Math.round(image.timings.denoiseMs + image.timings.decodeMs)} ms\n`,
    );
  } finally {
    await bundle.close();
  }
}

/** Image files named directly, and those found (recursively) in named folders. */
async function collectImageFiles(paths: string[]): Promise<{ files: string[]; explicit: Set<string> }> {
  const files: string[] = [];
  const explicit = new Set<string>();
  const walk = async (dir: string): Promise<void> => {
    const entries = await readdir(dir, { withFileTypes: true });
    entries.sort((a, b) => a.name.localeCompare(b.name));
    for (const entry of entries) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (entry.isFile() && IMAGE_EXTENSIONS.has(path.extname(entry.name).toLowerCase()))
        files.push(full);
    }
  };
  for (const p of paths) {
    const info = await stat(p).catch(() => null);
    if (!info) throw new UserInputError(`${p}: no such file or folder`);
    if (info.isDirectory()) await walk(p);
    else {
      files.push(p);
      explicit.add(p);
    }
  }
  return { files, explicit };
}

/** `gill index PATH...`: adds image files (or folders of them) to a community gallery and embeds them. */
export async function runIndex(config: Config, paths: string[], opts: { community?: string }): Promise<void> {
  const { files, explicit } = await collectImageFiles(paths);
  if (files.length === 0)
    throw new UserInputError(`no image files (${[...IMAGE_EXTENSIONS].join(', ')}) found`);
  await withEngine(config, async (engine, store) => {
    const ref = cliCommunity(opts.community);
    const community = await store.communities.ensure(ref);
    const ctx = jobContext();
    let indexed = 0;
    const failed: string[] = [];
    for (const file of files) {
      try {
        const image = await readImageFile(file);
        const hash = await store.blobs.put(image.bytes, image.mime);
        const record = await store.images.add(community.id, hash, {
          mime: image.mime,
          width: image.width,
          height: image.height,
          channelId: null,
          messageId: null,
          authorId: null,
          permalink: null,
          title: path.basename(file, path.extname(file)),
        });
        await engine.run(parsePayload({ kind: 'index', community: ref, imageId: record.id }), ctx);
        indexed++;
      } catch (error) {
        if (!(error instanceof UserInputError)) throw error;
        failed.push(file);
        process.stderr.write(`skipped ${error.message}\n`);
      }
    }
    const total = await store.images.count(community.id);
    process.stdout.write(
      `indexed ${indexed} image(s) into community "${ref.externalId}" (${total} in its gallery)\n`,
    );
    if (failed.some((f) => explicit.has(f)) || indexed === 0) process.exitCode = 1;
  });
}

/** `gill find QUERY`: the community's gallery images nearest to a text. */
export async function runFind(
  config: Config,
  query: string,
  opts: { k?: number; community?: string },
): Promise<void> {
  await withEngine(config, async (engine, store) => {
    const payload = parsePayload({
      kind: 'find',
      community: cliCommunity(opts.community),
      query,
      k: opts.k ?? 5,
    });
    const result = await engine.run(payload, jobContext());
    for (const [i, image] of result.images.entries()) {
      const id = image.source?.imageId;
      const record = id ? await store.images.get(id) : null;
      const name = record?.title ?? record?.hash.slice(0, 12) ?? image.hash.slice(0, 12);
      process.stdout.write(
        `${i + 1}. ${image.score.toFixed(3)}  ${name}  (image ${id}, ${image.width}×${image.height})\n`,
      );
    }
    printNotes(result.notes);
  });
}
