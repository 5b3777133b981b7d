/**
 * Engine benchmark: latency of `imagine` (and of a chat turn and `find` through the Engine), the PyTorch
 * reference pipeline from models/training timed side by side with the same weights and thread count, and
 * the UNet loop's achieved GFLOP/s against a measured matrix-multiply ceiling (an ONNX Runtime MatMul on
 * the same threads). Ends with one line of JSON.
 *
 *   npm run bench:engine -- [--bundle models/gill-tiny] [--work models/training/checkpoints/full] [--threads 2]
 *                           [--iters 20] [--warmup 3] [--no-reference]
 *
 * Engine and reference runs alternate, so on a shared machine both meet the same load, and both runtimes'
 * worker threads wait the same way: passively unless OMP_WAIT_POLICY=ACTIVE (then the engine's ONNX
 * Runtime threads spin too). Spinning threads fight other processes for the cores: one reference image took
 * 28 s instead of 1.3 s here under a load of 4 on 2 cores.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs, promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import { loadConfig } from '../src/config.ts';
import { type Bundle, loadBundle } from '../src/engine/bundle.ts';
import { encodePrompt, generate } from '../src/engine/diffusion/pipeline.ts';
import type { JobContext } from '../src/jobs.ts';
import { createEngine } from '../src/engine/index.ts';
import { type CommunityRef, type JobPayloadInput, parsePayload } from '../src/jobs.ts';
import { createLogger } from '../src/log.ts';
import { connect } from '../src/store/index.ts';

const run = promisify(execFile);
const PYTHON = '/usr/bin/python3';

const { values: args } = parseArgs({
  options: {
    bundle: { type: 'string', default: 'models/gill-tiny' },
    /** The checkpoints the bundle was exported from (the reference's weights): the committed ones by default. */
    work: { type: 'string', default: 'models/training/checkpoints/full' },
    threads: { type: 'string', default: '2' },
    iters: { type: 'string', default: '20' },
    warmup: { type: 'string', default: '3' },
    'no-reference': { type: 'boolean', default: false },
  },
});
const bundleDir = path.resolve(args.bundle);
const threads = Number(args.threads);
const iters = Number(args.iters);
const warmup = Number(args.warmup);
for (const [name, value, min] of [
  ['threads', threads, 1],
  ['iters', iters, 1],
  ['warmup', warmup, 0],
] as const) {
  if (!Number.isInteger(value) || value < min) throw new Error(`--${name} must be an integer ≥ ${min}`);
}
const loadAtStart = loadavg()[0]!;

const PROMPTS = [
  'a red circle',
  'a big blue star on the left',
  'a small green square above a yellow triangle',
  'a purple heart',
];

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (rank - lo);
}

const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;
const stats = (ms: number[]) => ({
  p50: round(percentile(ms, 50)),
  p95: round(percentile(ms, 95)),
  n: ms.length,
});

/** One `imagine` as the engine does it: the prompt through the text encoder, diffusion, VAE, PNG. */
async function engineImagine(bundle: Bundle, prompt: string, seed: number) {
  const started = performance.now();
  const conditioning = await encodePrompt(bundle, prompt);
  const image = await generate({ bundle, conditioning, seed });
  return { ms: performance.now() - started, denoise_ms: image.timings.denoiseMs };
}

// ---- the Engine (what a worker runs): chat turns, find and imagine jobs on an embedded store ----

const CHATS = [
  'Q: what colour is the sky?\nA:',
  'Q: draw a big red star on the left.\nA:',
  'Q: my favourite colour is green.\nA: nice choice!\nQ: draw a small circle in my favourite colour.\nA:',
  'Q: show me a smiling face.\nA:',
];
const QUERIES = ['a picture of a grinning face', 'a red heart', 'a cat face', 'a thumbs up'];

async function timeEngine(gallerySize: number) {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'gill-bench-engine-'));
  const config = loadConfig({ GILL_MODEL: bundleDir, GILL_DATA_DIR: dataDir, GILL_THREADS: String(threads) });
  const store = await connect(config);
  const engine = await createEngine(config, store, createLogger('silent'));
  const ctx: JobContext = { progress: () => {}, signal: new AbortController().signal };
  const community: CommunityRef = { platform: 'cli', externalId: 'bench' };
  const run = (payload: JobPayloadInput) => engine.run(parsePayload(payload), ctx);
  try {
    // The gallery `find` searches: emoji images from the npm package the bundle was trained with.
    const emojiDir = path.resolve('node_modules/emoji-datasource-google/img/google/64');
    const files = (await readdir(emojiDir))
      .filter((f) => f.endsWith('.png'))
      .sort()
      .slice(0, gallerySize);
    const c = await store.communities.ensure(community);
    for (const file of files) {
      const hash = await store.blobs.put(await readFile(path.join(emojiDir, file)), 'image/png');
      const meta = {
        mime: 'image/png',
        width: 64,
        height: 64,
        title: file,
        channelId: null,
        messageId: null,
        authorId: null,
        permalink: null,
      };
      const record = await store.images.add(c.id, hash, meta);
      await run({ kind: 'index', community, imageId: record.id });
    }
    const timed = async (make: (i: number) => JobPayloadInput) => {
      const ms: number[] = [];
      for (let i = 0; i < warmup + iters; i++) {
        const started = performance.now();
        await run(make(i));
        if (i >= warmup) ms.push(performance.now() - started);
      }
      return stats(ms);
    };
    const chat = await timed((i) => ({
      kind: 'chat',
      community,
      seed: i,
      context: [{ type: 'text', role: 'user', text: CHATS[i % CHATS.length]! }],
    }));
    const find = await timed((i) => ({ kind: 'find', community, query: QUERIES[i % QUERIES.length]!, k: 4 }));
    const imagine = await timed((i) => ({
      kind: 'imagine',
      community,
      prompt: PROMPTS[i % PROMPTS.length]!,
      seed: i,
    }));
    return { chat, find, imagine, gallery: files.length };
  } finally {
    await engine.close();
    await store.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}

// ---- matrix-multiply ceiling: a one-node ONNX MatMul graph, encoded here as protobuf bytes ----

function varint(n: number): number[] {
  const out: number[] = [];
  while (n > 127) {
    out.push((n & 127) | 128);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}
const field = (num: number, bytes: number[]) => [
  ...varint((num << 3) | 2),
  ...varint(bytes.length),
  ...bytes,
];
const intField = (num: number, value: number) => [...varint(num << 3), ...varint(value)];
const str = (num: number, s: string) => field(num, [...Buffer.from(s)]);

/** ModelProto { ir_version 7, opset 13, graph { C = MatMul(A [m,k], B [k,n]) } }. */
function matmulModel(m: number, k: number, n: number): Uint8Array {
  const tensorType = (dims: number[]) =>
    field(1, [
      ...intField(1, 1 /* FLOAT */),
      ...field(
        2,
        dims.flatMap((d) => field(1, intField(1, d))),
      ),
    ]);
  const valueInfo = (name: string, dims: number[]) => [...str(1, name), ...field(2, tensorType(dims))];
  const node = [...str(1, 'A'), ...str(1, 'B'), ...str(2, 'C'), ...str(4, 'MatMul')];
  const graph = [
    ...field(1, node),
    ...str(2, 'matmul'),
    ...field(11, valueInfo('A', [m, k])),
    ...field(11, valueInfo('B', [k, n])),
    ...field(12, valueInfo('C', [m, n])),
  ];
  return Uint8Array.from([
    ...intField(1, 7),
    ...field(7, graph),
    ...field(8, [...str(1, ''), ...intField(2, 13)]),
  ]);
}

async function matmulCeiling(): Promise<{ gflops: number; size: number }> {
  const size = 1024;
  const session = await ort.InferenceSession.create(matmulModel(size, size, size), {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
  });
  const a = new ort.Tensor(
    'float32',
    Float32Array.from({ length: size * size }, (_, i) => (i % 7) - 3),
    [size, size],
  );
  const b = new ort.Tensor(
    'float32',
    Float32Array.from({ length: size * size }, (_, i) => (i % 5) - 2),
    [size, size],
  );
  const times: number[] = [];
  for (let i = 0; i < 12; i++) {
    const started = performance.now();
    await session.run({ A: a, B: b });
    if (i >= 2) times.push(performance.now() - started);
  }
  await session.release();
  // The best run: the ceiling is what the hardware reaches, not what a busy machine happened to allow.
  return { gflops: round((2 * size ** 3) / (Math.min(...times) * 1e6)), size };
}

// ---- the PyTorch reference (models/training/bench_reference.py) ----

const REFERENCE = path.resolve('models/training/bench_reference.py');
const referenceEnv = {
  ...process.env,
  OMP_NUM_THREADS: String(threads),
  OPENBLAS_NUM_THREADS: String(threads),
  MKL_NUM_THREADS: String(threads),
  OMP_WAIT_POLICY: process.env.OMP_WAIT_POLICY ?? 'PASSIVE',
};

const spinWait = referenceEnv.OMP_WAIT_POLICY.toUpperCase() === 'ACTIVE';

interface Timed {
  ms: number;
  denoise_ms: number;
}

/** The reference as a server: one timed run per request, on the training run's checkpoints. */
async function startReference(steps: number, guidance: number) {
  const child = spawn(
    PYTHON,
    [
      REFERENCE,
      '--bundle',
      bundleDir,
      '--work',
      path.resolve(args.work),
      '--threads',
      String(threads),
      '--steps',
      String(steps),
      '--guidance',
      String(guidance),
    ],
    { env: referenceEnv, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000);
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async (): Promise<Record<string, unknown>> => {
    const line = await lines.next();
    if (line.done) throw new Error(stderr.trim().split('\n').at(-1) || 'bench_reference.py exited');
    return JSON.parse(line.value) as Record<string, unknown>;
  };
  const ready = (await next()) as { torch: string; threads: number };
  return {
    torch: ready.torch,
    threads: ready.threads,
    async imagine(prompt: string, seed: number): Promise<Timed> {
      child.stdin.write(`${JSON.stringify({ prompt, seed })}\n`);
      return (await next()) as unknown as Timed;
    },
    stop: () => child.stdin.end(),
  };
}

/** UNet FLOPs per guided call, counted by the PyTorch profiler on the model code (no checkpoints needed). */
async function unetFlops(guidance: number): Promise<number | { error: string }> {
  try {
    const { stdout } = await run(
      PYTHON,
      [REFERENCE, '--bundle', bundleDir, '--flops-only', '--guidance', String(guidance)],
      {
        env: referenceEnv,
      },
    );
    return (JSON.parse(stdout.trim().split('\n').at(-1) ?? '') as { unet_gflop_per_call: number })
      .unet_gflop_per_call;
  } catch (error) {
    const e = error as { stderr?: string; message: string };
    return { error: (e.stderr?.trim().split('\n').at(-1) || e.message).slice(0, 500) };
  }
}

async function main(): Promise<void> {
  console.log(
    `engine benchmark: bundle ${bundleDir}, ${threads} thread(s), ${iters} timed runs after ${warmup} warm-up`,
  );
  const bundle = await loadBundle(bundleDir, { threads, spinWait });
  const d = bundle.manifest.defaults;

  let reference: Awaited<ReturnType<typeof startReference>> | null = null;
  let referenceError: string | null = args['no-reference'] ? 'skipped (--no-reference)' : null;
  if (!referenceError) {
    try {
      reference = await startReference(d.steps, d.guidance);
    } catch (error) {
      referenceError = (error as Error).message.slice(0, 500);
    }
  }
  const engineRuns: Timed[] = [];
  const referenceRuns: Timed[] = [];
  for (let i = 0; i < warmup + iters; i++) {
    const prompt = PROMPTS[i % PROMPTS.length]!;
    const ours = await engineImagine(bundle, prompt, i);
    const theirs = reference ? await reference.imagine(prompt, i) : null;
    if (i < warmup) continue;
    engineRuns.push(ours);
    if (theirs) referenceRuns.push(theirs);
  }
  reference?.stop();
  const imagineStats = stats(engineRuns.map((r) => r.ms));
  console.log(
    `imagine (${d.steps} ${d.scheduler} steps, guidance ${d.guidance}, PNG): p50 ${imagineStats.p50} ms, p95 ${imagineStats.p95} ms`,
  );
  let refStats: ReturnType<typeof stats> | null = null;
  let ratio: number | null = null;
  let bestRatio: number | null = null;
  if (reference) {
    refStats = stats(referenceRuns.map((r) => r.ms));
    ratio = round(refStats.p50 / imagineStats.p50, 2);
    bestRatio = round(
      Math.min(...referenceRuns.map((r) => r.ms)) / Math.min(...engineRuns.map((r) => r.ms)),
      2,
    );
    console.log(
      `PyTorch ${reference.torch} reference imagine (same weights, ${reference.threads} threads, OMP_WAIT_POLICY=${referenceEnv.OMP_WAIT_POLICY}, engine spinWait ${spinWait}): p50 ${refStats.p50} ms, p95 ${refStats.p95} ms → engine ${ratio}× faster at p50, ${bestRatio}× best against best`,
    );
  } else {
    console.log(`PyTorch reference: not measured (${referenceError})`);
  }

  let engineStats: Awaited<ReturnType<typeof timeEngine>> | { error: string };
  try {
    engineStats = await timeEngine(200);
    const e = engineStats;
    console.log(
      `Engine jobs (createEngine as configured, embedded store, ${e.gallery} indexed images): chat turn p50 ${e.chat.p50} ms, p95 ${e.chat.p95} ms; find p50 ${e.find.p50} ms, p95 ${e.find.p95} ms; imagine p50 ${e.imagine.p50} ms, p95 ${e.imagine.p95} ms`,
    );
  } catch (error) {
    engineStats = { error: (error as Error).message.slice(0, 300) };
    console.log(`Engine jobs: not measured (${engineStats.error})`);
  }

  const ceiling = await matmulCeiling();
  console.log(
    `matrix-multiply ceiling (ONNX Runtime MatMul ${ceiling.size}³, ${threads} thread(s)): ${ceiling.gflops} GFLOP/s`,
  );
  const flops = await unetFlops(d.guidance);
  let unetGflops: number | null = null;
  let refGflops: number | null = null;
  if (typeof flops === 'number') {
    // Guidance batches both branches into one UNet call per step.
    const loopGflop = flops * d.steps;
    unetGflops = round(
      loopGflop /
        (percentile(
          engineRuns.map((r) => r.denoise_ms),
          50,
        ) /
          1000),
    );
    if (referenceRuns.length)
      refGflops = round(
        loopGflop /
          (percentile(
            referenceRuns.map((r) => r.denoise_ms),
            50,
          ) /
            1000),
      );
    console.log(
      `UNet loop: ${round(flops, 3)} GFLOP per call × ${d.steps} steps; engine ${unetGflops} GFLOP/s${refGflops === null ? '' : `, PyTorch ${refGflops} GFLOP/s`}; ceiling ${ceiling.gflops} GFLOP/s (engine at ${round((100 * unetGflops) / ceiling.gflops)}%)`,
    );
  } else {
    console.log(`UNet FLOPs: not counted (${flops.error})`);
  }
  await bundle.close();

  const load = Math.max(loadAtStart, loadavg()[0]!);
  if (load > threads)
    console.log(`note: load average ${round(load, 2)} on this machine; figures include contention`);
  console.log(
    JSON.stringify({
      bench: 'engine',
      bundle: bundle.manifest.name,
      threads,
      loadAverage: round(load, 2),
      imagine: { ...imagineStats, steps: d.steps, scheduler: d.scheduler, guidance: d.guidance, spinWait },
      imagineDenoise: stats(engineRuns.map((r) => r.denoise_ms)),
      reference:
        reference && refStats
          ? {
              imagine: refStats,
              torch: reference.torch,
              threads: reference.threads,
              ompWaitPolicy: referenceEnv.OMP_WAIT_POLICY,
            }
          : { error: referenceError },
      speedupVsReference: ratio,
      bestSpeedupVsReference: bestRatio,
      engine: engineStats,
      unetGflopPerCall: typeof flops === 'number' ? flops : null,
      unetGflops,
      referenceUnetGflops: refGflops,
      matmulCeilingGflops: ceiling.gflops,
    }),
  );
}

await main();
