/**
 * bench:real — the engine's runtime at real width, against PyTorch eager, side by side in one run with the
 * same thread count. Random weights (issue #11: nothing real is downloadable here) in the converter's own
 * modules (models/convert), exported as convert.py exports them:
 *   - OPT-6.7B width (hidden 4096, 32 heads, FFN 16384, vocab 50274): a decode step with a KV cache of 64,
 *     on 1 and 2 layers; the difference is one layer, scaled to the 32 of OPT-6.7B;
 *   - Stable Diffusion 1.5's UNet: one step at 64×64 latents, batch 2 (classifier-free guidance);
 *   - CLIP ViT-L/14: one 224×224 image.
 * Each side runs in its own process per module, so peak RSS is that module's. ONNX Runtime gets the engine's
 * session options (src/engine/bundle.ts: intra-op threads, one inter-op thread, all graph optimisations).
 *
 *   npm run bench:real -- [--threads 2] [--lm-iters 20] [--unet-iters 3] [--clip-iters 5] [--spin]
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import * as ort from 'onnxruntime-node';

const run = promisify(execFile);
const PYTHON = '.venv-convert/bin/python';
const HELPER = 'models/convert/bench/real_width.py';
const PAST = 64;

const { values: args } = parseArgs({
  options: {
    threads: { type: 'string', default: '2' },
    'lm-iters': { type: 'string', default: '20' },
    'unet-iters': { type: 'string', default: '3' },
    'clip-iters': { type: 'string', default: '5' },
    /** Let ONNX Runtime's idle threads spin (its default); off by default, as on cores shared with other work. */
    spin: { type: 'boolean', default: false },
    child: { type: 'string' },
    dir: { type: 'string' },
    iters: { type: 'string' },
    warmup: { type: 'string' },
  },
});
const threads = Number(args.threads);

type Module = 'lm1' | 'lm2' | 'clip' | 'unet';
interface Timing {
  ms: number[];
  peakRssMiB: number;
}

function randn(size: number, scale = 1): Float32Array {
  const out = new Float32Array(size);
  for (let i = 0; i < size; i++) out[i] = (Math.random() * 2 - 1) * 1.7320508 * scale;
  return out;
}

function feeds(name: Module): Record<string, ort.Tensor> {
  if (name === 'unet')
    return {
      sample: new ort.Tensor('float32', randn(2 * 4 * 64 * 64), [2, 4, 64, 64]),
      timestep: new ort.Tensor('float32', Float32Array.of(500, 500), [2]),
      encoder_hidden_states: new ort.Tensor('float32', randn(2 * 77 * 768), [2, 77, 768]),
    };
  if (name === 'clip') return { pixel_values: new ort.Tensor('float32', randn(3 * 224 * 224), [1, 3, 224, 224]) };
  const layers = Number(name.slice(2));
  const f: Record<string, ort.Tensor> = {
    inputs_embeds: new ort.Tensor('float32', randn(4096, 0.02), [1, 1, 4096]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(PAST + 1).fill(1n), [1, PAST + 1]),
  };
  for (let i = 0; i < layers; i++)
    for (const kv of ['key', 'value'])
      f[`past_key_values.${i}.${kv}`] = new ort.Tensor('float32', randn(32 * PAST * 128), [1, 32, PAST, 128]);
  return f;
}

/** Child process: one graph on ONNX Runtime with the engine's session options. */
async function onnxChild(name: Module, dir: string, iters: number, warmup: number): Promise<void> {
  const session = await ort.InferenceSession.create(path.join(dir, `${name}.onnx`), {
    executionProviders: ['cpu'],
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    ...(args.spin ? {} : { extra: { session: { intra_op: { allow_spinning: '0' } } } }),
  });
  const input = feeds(name);
  const ms: number[] = [];
  for (let i = 0; i < warmup + iters; i++) {
    const t = performance.now();
    await session.run(input);
    if (i >= warmup) ms.push(performance.now() - t);
  }
  await session.release();
  process.stdout.write(`${JSON.stringify({ ms, peakRssMiB: process.resourceUsage().maxRSS / 1024 })}\n`);
}

const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};
const median = (xs: number[]) => quantile(xs, 0.5);

async function onnxRun(name: Module, dir: string, iters: number, warmup: number): Promise<Timing> {
  const childArgs = [...process.execArgv, process.argv[1]!, '--child', name, '--dir', dir, '--threads', String(threads)];
  childArgs.push('--iters', String(iters), '--warmup', String(warmup), ...(args.spin ? ['--spin'] : []));
  const { stdout } = await run(process.execPath, childArgs, { maxBuffer: 1 << 24 });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as Timing;
}

interface ExportStats {
  seconds: number;
  weightsMiB: number;
  peakRssMiB: number;
}

/** The graph as convert.py exports it, in its own process (its peak RSS is the export's). */
async function exportGraph(name: Module, dir: string): Promise<ExportStats> {
  const { stdout } = await run(PYTHON, [HELPER, 'export', name, dir], { maxBuffer: 1 << 24 });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as ExportStats;
}

async function eagerRun(name: Module, iters: number, warmup: number): Promise<Timing & { torch: string }> {
  const { stdout } = await run(PYTHON, [HELPER, 'eager', name, String(threads), String(iters), String(warmup)], {
    env: { ...process.env, OMP_NUM_THREADS: String(threads) },
    maxBuffer: 1 << 24,
  });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as Timing & { torch: string };
}

async function main(): Promise<void> {
  const started = performance.now();
  const load = [loadavg()[0]!];
  const dir = await mkdtemp(path.join(tmpdir(), 'gill-bench-real-'));
  try {
    console.log(`bench:real — threads ${threads}, ONNX Runtime spinning ${args.spin ? 'on' : 'off'}, graphs in ${dir}`);
    const plan: [Module, number, number][] = [
      ['lm1', Number(args['lm-iters']), 3],
      ['lm2', Number(args['lm-iters']), 3],
      ['clip', Number(args['clip-iters']), 1],
      ['unet', Number(args['unet-iters']), 1],
    ];
    const results: Record<string, { onnx: Timing; eager: Timing & { torch: string }; export: ExportStats }> = {};
    for (const [name, iters, warmup] of plan) {
      const exported = await exportGraph(name, dir);
      console.log(
        `${name.padEnd(5)} exported in ${exported.seconds} s: weights ${exported.weightsMiB} MiB, exporter peak RSS ${exported.peakRssMiB} MiB`,
      );
      // Both sides per module back to back: on a shared machine they meet about the same load.
      const onnx = await onnxRun(name, dir, iters, warmup);
      const eager = await eagerRun(name, iters, warmup);
      results[name] = { onnx, eager, export: exported };
      await rm(path.join(dir, `${name}.onnx`), { force: true });
      await rm(path.join(dir, `${name}.onnx.data`), { force: true });
      console.log(
        `${name.padEnd(5)} onnxruntime-node p50 ${median(onnx.ms).toFixed(1)} ms (p95 ${quantile(onnx.ms, 0.95).toFixed(1)}), peak RSS ${onnx.peakRssMiB.toFixed(0)} MiB | torch ${eager.torch} eager p50 ${median(eager.ms).toFixed(1)} ms (p95 ${quantile(eager.ms, 0.95).toFixed(1)}), peak RSS ${eager.peakRssMiB.toFixed(0)} MiB`,
      );
    }
    load.push(loadavg()[0]!);
    // One OPT layer = lm2 − lm1; the rest (embedding add, final norm, tied head) = lm1 − one layer.
    const perToken = (side: 'onnx' | 'eager') => {
      const one = median(results.lm1![side].ms);
      const layer = median(results.lm2![side].ms) - one;
      return { layer, opt67b: one - layer + 32 * layer };
    };
    const rows = {
      'LM decode step, one OPT-6.7B layer (ms)': [perToken('onnx').layer, perToken('eager').layer],
      'LM per token, 32 layers + head, KV cache 64 (ms, scaled)': [perToken('onnx').opt67b, perToken('eager').opt67b],
      'UNet step, 64×64 latents, batch 2 (ms)': [median(results.unet!.onnx.ms), median(results.unet!.eager.ms)],
      'CLIP ViT-L/14 encode, 224 px (ms)': [median(results.clip!.onnx.ms), median(results.clip!.eager.ms)],
      'peak RSS, UNet process (MiB)': [results.unet!.onnx.peakRssMiB, results.unet!.eager.peakRssMiB],
      'peak RSS, LM 2-layer process (MiB)': [results.lm2!.onnx.peakRssMiB, results.lm2!.eager.peakRssMiB],
      'peak RSS, CLIP process (MiB)': [results.clip!.onnx.peakRssMiB, results.clip!.eager.peakRssMiB],
    };
    for (const [name, r] of Object.entries(results))
      console.log(
        `export ${name}: peak RSS ${(r.export.peakRssMiB / r.export.weightsMiB).toFixed(2)}× the weights (${r.export.weightsMiB} MiB)`,
      );
    console.log(`\n${'figure'.padEnd(58)} ${'onnxruntime-node'.padStart(16)} ${'torch eager'.padStart(12)}  ratio`);
    for (const [label, [o, e]] of Object.entries(rows))
      console.log(`${label.padEnd(58)} ${o!.toFixed(1).padStart(16)} ${e!.toFixed(1).padStart(12)}  ${(o! / e!).toFixed(2)}`);
    const seconds = (performance.now() - started) / 1000;
    console.log(`load average ${load.map((l) => l.toFixed(1)).join(' → ')} on ${threads} threads; ${seconds.toFixed(0)} s in all`);
    console.log(JSON.stringify({ threads, spin: args.spin, load, seconds, rows, raw: results }));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (args.child) await onnxChild(args.child as Module, args.dir!, Number(args.iters), Number(args.warmup));
else await main();
