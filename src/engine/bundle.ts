import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { z } from 'zod';

/**
 * Loads a model bundle (models/README.md): validates manifest.json and every file it names, opens one
 * ONNX Runtime session per graph, checks each graph's input/output names against the format, and runs
 * every graph once on dummy inputs. The warm-up doubles as the dimension check: exported graphs often
 * declare symbolic dimensions, so the only reliable way to know a graph matches the manifest is to run it.
 */

export class BundleError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BundleError';
  }
}

const file = z
  .string()
  .min(1)
  .refine((p) => !path.isAbsolute(p) && !p.split(/[\\/]/).includes('..'), {
    message: 'must be a file name inside the bundle folder',
  });
const dim = z.number().int().positive();
const tokenId = z.number().int().nonnegative();
const rgb = z.tuple([z.number(), z.number(), z.number()]);

export const manifestSchema = z.object({
  format: z.literal('gill-bundle/1'),
  name: z.string().min(1),
  lm: z.object({
    embed: file,
    decoder: file,
    tokenizer: file,
    hiddenSize: dim,
    numLayers: dim,
    numHeads: dim,
    headDim: dim,
    vocabSize: dim,
    maxPositions: dim,
    bosId: tokenId,
    eosId: tokenId,
    padId: tokenId,
    newlineId: tokenId,
    addBos: z.boolean(),
    imgTokenIds: z.array(tokenId).min(1),
  }),
  vision: z.object({
    encoder: file,
    imageSize: dim,
    resize: z.literal('shortest-side-bicubic-center-crop'),
    mean: rgb,
    std: rgb.refine((s) => s.every((v) => v > 0), { message: 'every std must be > 0' }),
    pooledSize: dim,
  }),
  gill: z.object({
    visualPrefix: file,
    numVisualTokens: dim,
    imageRetrieval: file,
    textRetrieval: file,
    retrievalDim: dim,
    logitScale: z.number(),
    mapper: file,
    decision: file,
  }),
  diffusion: z.object({
    textEncoder: file,
    textTokenizer: file,
    textMaxLength: dim,
    textPadId: tokenId,
    textBosId: tokenId.nullable(),
    textEosId: tokenId.nullable(),
    conditioningDim: dim,
    unet: file,
    vaeDecoder: file,
    latentChannels: dim,
    latentSize: dim,
    imageSize: dim,
    vaeScalingFactor: z.number().positive(),
    scheduler: z.object({
      numTrainTimesteps: dim,
      betaSchedule: z.enum(['linear', 'scaled_linear', 'squaredcos_cap_v2']),
      betaStart: z.number().positive(),
      betaEnd: z.number().positive(),
      predictionType: z.enum(['epsilon', 'v_prediction', 'sample']),
      // Optional, with diffusers' DDIMScheduler names and meanings.
      timestepSpacing: z.enum(['linspace', 'leading', 'trailing']).optional(),
      stepsOffset: z.number().int().nonnegative().optional(),
      setAlphaToOne: z.boolean().optional(),
      clipSample: z.boolean().optional(),
    }),
  }),
  defaults: z.object({
    maxNewTokens: dim,
    temperature: z.number().min(0),
    topP: z.number().gt(0).max(1),
    retScaleFactor: z.number().positive(),
    genScaleFactor: z.number().positive(),
    dialogueTemplate: z.string().includes('{text}'),
    scheduler: z.enum(['ddim', 'dpm++']),
    steps: dim,
    guidance: z.number().min(0),
    /**
     * When the decision head picks "retrieve" on its own but the closest gallery image is less similar than
     * this (cosine), the image is generated instead. The paper's first decision model saw the best retrieval
     * score as a feature; this keeps that safeguard for bundles whose decision head does not. Absent: no floor.
     */
    minRetrieveSimilarity: z.number().min(-1).max(1).optional(),
  }),
});
export type Manifest = z.infer<typeof manifestSchema>;

/** One session per graph of the bundle. */
export interface BundleSessions {
  lmEmbed: ort.InferenceSession;
  lm: ort.InferenceSession;
  imageEncoder: ort.InferenceSession;
  visualPrefix: ort.InferenceSession;
  imageRetrieval: ort.InferenceSession;
  textRetrieval: ort.InferenceSession;
  mapper: ort.InferenceSession;
  decision: ort.InferenceSession;
  textEncoder: ort.InferenceSession;
  unet: ort.InferenceSession;
  vaeDecoder: ort.InferenceSession;
}
export type GraphName = keyof BundleSessions;

export interface Bundle {
  /** Absolute bundle folder. */
  dir: string;
  manifest: Manifest;
  sessions: BundleSessions;
  /** Parsed tokenizer.json of the LM and of the diffusion text encoder. */
  lmTokenizerJson: Record<string, unknown>;
  textTokenizerJson: Record<string, unknown>;
  executionProvider: 'cpu' | 'cuda';
  threads: number | undefined;
  /**
   * The decision graph also takes `retrieval_score` [B,1], the best gallery cosine for the [IMG0] (GILL's first
   * decision model); read from the graph, so older bundles keep their single input.
   */
  decisionUsesRetrievalScore: boolean;
  close(): Promise<void>;
}

export interface LoadBundleOptions {
  executionProvider?: 'cpu' | 'cuda';
  /** Intra-op threads per session; ONNX Runtime picks when undefined. */
  threads?: number;
  /** Run each graph once on dummy inputs (checks dimensions; first real job is not slowed). Default true. */
  warmUp?: boolean;
  /**
   * Let idle intra-op threads spin between ops (ONNX Runtime's default, true): a little faster on cores of
   * its own, much slower on cores shared with other busy processes.
   */
  spinWait?: boolean;
}

interface GraphSpec {
  manifestField: string;
  file: (m: Manifest) => string;
  inputs: (m: Manifest) => string[];
  /** Inputs the graph may leave out (the engine feeds only what the graph declares). */
  optionalInputs?: string[];
  outputs: (m: Manifest) => string[];
}

const kvNames = (m: Manifest, prefix: string) =>
  Array.from({ length: m.lm.numLayers }, (_, i) => [`${prefix}.${i}.key`, `${prefix}.${i}.value`]).flat();

const GRAPHS: Record<GraphName, GraphSpec> = {
  lmEmbed: {
    manifestField: 'lm.embed',
    file: (m) => m.lm.embed,
    inputs: () => ['input_ids'],
    outputs: () => ['inputs_embeds'],
  },
  lm: {
    manifestField: 'lm.decoder',
    file: (m) => m.lm.decoder,
    inputs: (m) => ['inputs_embeds', 'attention_mask', ...kvNames(m, 'past_key_values')],
    optionalInputs: ['position_ids'],
    outputs: (m) => ['logits', 'hidden_states', ...kvNames(m, 'present')],
  },
  imageEncoder: {
    manifestField: 'vision.encoder',
    file: (m) => m.vision.encoder,
    inputs: () => ['pixel_values'],
    outputs: () => ['pooler_output'],
  },
  visualPrefix: {
    manifestField: 'gill.visualPrefix',
    file: (m) => m.gill.visualPrefix,
    inputs: () => ['pooled'],
    outputs: () => ['prefix'],
  },
  imageRetrieval: {
    manifestField: 'gill.imageRetrieval',
    file: (m) => m.gill.imageRetrieval,
    inputs: () => ['pooled'],
    outputs: () => ['embedding'],
  },
  textRetrieval: {
    manifestField: 'gill.textRetrieval',
    file: (m) => m.gill.textRetrieval,
    inputs: () => ['hidden'],
    outputs: () => ['embedding'],
  },
  mapper: {
    manifestField: 'gill.mapper',
    file: (m) => m.gill.mapper,
    inputs: () => ['hidden', 'token_embeds'],
    outputs: () => ['cond'],
  },
  decision: {
    manifestField: 'gill.decision',
    file: (m) => m.gill.decision,
    inputs: () => ['hidden'],
    optionalInputs: ['retrieval_score'],
    outputs: () => ['logits'],
  },
  textEncoder: {
    manifestField: 'diffusion.textEncoder',
    file: (m) => m.diffusion.textEncoder,
    inputs: () => ['input_ids'],
    outputs: () => ['last_hidden_state'],
  },
  unet: {
    manifestField: 'diffusion.unet',
    file: (m) => m.diffusion.unet,
    inputs: () => ['sample', 'timestep', 'encoder_hidden_states'],
    outputs: () => ['noise_pred'],
  },
  vaeDecoder: {
    manifestField: 'diffusion.vaeDecoder',
    file: (m) => m.diffusion.vaeDecoder,
    inputs: () => ['latent'],
    outputs: () => ['image'],
  },
};

export const MANIFEST_FILE = 'manifest.json';

/** Reads and validates manifest.json; errors name the bundle file and the field. */
export async function readManifest(dir: string): Promise<Manifest> {
  const where = path.join(dir, MANIFEST_FILE);
  let raw: string;
  try {
    raw = await readFile(where, 'utf8');
  } catch (error) {
    throw new BundleError(
      `model bundle: cannot read ${where} (${(error as NodeJS.ErrnoException).code ?? error})`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (error) {
    throw new BundleError(`model bundle: ${where} is not valid JSON (${(error as Error).message})`);
  }
  const parsed = manifestSchema.safeParse(json);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
    throw new BundleError(`model bundle: ${where} is invalid:\n  ${problems.join('\n  ')}`);
  }
  checkManifestConsistency(parsed.data, where);
  return parsed.data;
}

function checkManifestConsistency(m: Manifest, where: string): void {
  const problems: string[] = [];
  const ids = { bosId: m.lm.bosId, eosId: m.lm.eosId, padId: m.lm.padId, newlineId: m.lm.newlineId };
  for (const [key, id] of Object.entries(ids)) {
    if (id >= m.lm.vocabSize) problems.push(`lm.${key}: ${id} is not below lm.vocabSize ${m.lm.vocabSize}`);
  }
  m.lm.imgTokenIds.forEach((id, i) => {
    if (id >= m.lm.vocabSize)
      problems.push(`lm.imgTokenIds[${i}]: ${id} is not below lm.vocabSize ${m.lm.vocabSize}`);
  });
  if (new Set(m.lm.imgTokenIds).size !== m.lm.imgTokenIds.length)
    problems.push('lm.imgTokenIds: ids must be distinct');
  if (m.lm.numHeads * m.lm.headDim !== m.lm.hiddenSize) {
    problems.push(
      `lm.numHeads × lm.headDim (${m.lm.numHeads}×${m.lm.headDim}) must equal lm.hiddenSize ${m.lm.hiddenSize}`,
    );
  }
  const reserved = m.gill.numVisualTokens + m.lm.imgTokenIds.length + 2;
  if (m.lm.maxPositions <= reserved) {
    problems.push(
      `lm.maxPositions ${m.lm.maxPositions} leaves no room for a prompt (needs more than ${reserved})`,
    );
  }
  if (m.diffusion.scheduler.betaEnd <= m.diffusion.scheduler.betaStart) {
    problems.push('diffusion.scheduler.betaEnd must be greater than betaStart');
  }
  if (problems.length)
    throw new BundleError(`model bundle: ${where} is inconsistent:\n  ${problems.join('\n  ')}`);
}

async function requireFile(dir: string, rel: string, field: string): Promise<string> {
  const full = path.join(dir, rel);
  const info = await stat(full).catch(() => null);
  if (!info?.isFile())
    throw new BundleError(`model bundle: ${field} names "${rel}", but ${full} does not exist`);
  if (info.size === 0) throw new BundleError(`model bundle: ${field} names "${rel}", but ${full} is empty`);
  return full;
}

async function readTokenizerJson(dir: string, rel: string, field: string): Promise<Record<string, unknown>> {
  const full = await requireFile(dir, rel, field);
  try {
    const json = JSON.parse(await readFile(full, 'utf8')) as unknown;
    if (typeof json !== 'object' || json === null || !('model' in json))
      throw new Error('no "model" section');
    return json as Record<string, unknown>;
  } catch (error) {
    throw new BundleError(
      `model bundle: ${field} ${full} is not a Hugging Face tokenizer.json (${(error as Error).message})`,
    );
  }
}

function sessionOptions(options: LoadBundleOptions): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: options.executionProvider === 'cuda' ? ['cuda', 'cpu'] : ['cpu'],
    ...(options.threads ? { intraOpNumThreads: options.threads } : {}),
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    ...(options.spinWait === false ? { extra: { session: { intra_op: { allow_spinning: '0' } } } } : {}),
  };
}

async function openSession(
  dir: string,
  m: Manifest,
  name: GraphName,
  options: LoadBundleOptions,
): Promise<ort.InferenceSession> {
  const spec = GRAPHS[name];
  const rel = spec.file(m);
  const full = await requireFile(dir, rel, spec.manifestField);
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(full, sessionOptions(options));
  } catch (error) {
    const hint =
      options.executionProvider === 'cuda'
        ? '\nGILL_EXECUTION_PROVIDER=cuda needs onnxruntime-node installed with CUDA (npm install with onnxruntime-node-install=cuda12) and the CUDA 12 libraries'
        : '';
    throw new BundleError(
      `model bundle: ${spec.manifestField} ${full} cannot be loaded by ONNX Runtime: ${(error as Error).message}${hint}`,
    );
  }
  const missingIn = spec.inputs(m).filter((n) => !session.inputNames.includes(n));
  const allowedIn = new Set([...spec.inputs(m), ...(spec.optionalInputs ?? [])]);
  const extraIn = session.inputNames.filter((n) => !allowedIn.has(n));
  const missingOut = spec.outputs(m).filter((n) => !session.outputNames.includes(n));
  const problems = [
    missingIn.length ? `missing inputs ${missingIn.join(', ')}` : '',
    extraIn.length ? `unexpected inputs ${extraIn.join(', ')}` : '',
    missingOut.length ? `missing outputs ${missingOut.join(', ')}` : '',
  ].filter(Boolean);
  if (problems.length) {
    await session.release();
    throw new BundleError(
      `model bundle: ${spec.manifestField} ${rel}: ${problems.join('; ')} (graph has inputs [${session.inputNames.join(', ')}], outputs [${session.outputNames.join(', ')}])`,
    );
  }
  return session;
}

/** The element type a graph declares for one of its inputs (e.g. the UNet's timestep may be int64 or float). */
export function inputType(session: ort.InferenceSession, name: string): ort.Tensor.Type {
  const meta = session.inputMetadata.find((v) => v.name === name);
  return meta?.isTensor ? meta.type : 'float32';
}

function zeros(type: ort.Tensor.Type, dims: number[]): ort.Tensor {
  const size = dims.reduce((a, b) => a * b, 1);
  if (type === 'int64') return new ort.Tensor('int64', new BigInt64Array(size), dims);
  if (type === 'int32') return new ort.Tensor('int32', new Int32Array(size), dims);
  return new ort.Tensor('float32', new Float32Array(size), dims);
}

function shapeError(field: string, output: string, got: readonly number[], want: number[]): BundleError {
  return new BundleError(
    `model bundle: ${field} output "${output}" has shape [${got.join(',')}], the manifest implies [${want.join(',')}]`,
  );
}

async function checkRun(
  sessions: BundleSessions,
  name: GraphName,
  feeds: Record<string, ort.Tensor>,
  expected: Record<string, number[]>,
): Promise<void> {
  const session = sessions[name];
  const field = GRAPHS[name].manifestField;
  const declared = Object.fromEntries(Object.entries(feeds).filter(([k]) => session.inputNames.includes(k)));
  let out: ort.InferenceSession.OnnxValueMapType;
  try {
    out = await session.run(declared);
  } catch (error) {
    throw new BundleError(
      `model bundle: ${field} failed its warm-up run with manifest dimensions: ${(error as Error).message}`,
    );
  }
  for (const [output, want] of Object.entries(expected)) {
    const got = (out[output] as ort.Tensor).dims;
    if (got.length !== want.length || got.some((d, i) => d !== want[i]))
      throw shapeError(field, output, got, want);
  }
}

/** Runs every graph once with the manifest's dimensions and checks the shapes that come out. */
async function warmUp(sessions: BundleSessions, m: Manifest): Promise<void> {
  const { hiddenSize: H, numHeads, headDim, vocabSize, numLayers } = m.lm;
  const Dv = m.vision.pooledSize;
  const S = m.vision.imageSize;
  const r = m.lm.imgTokenIds.length;
  const d = m.diffusion;
  const L = d.textMaxLength;
  const C = d.latentChannels;
  const h = d.latentSize;

  await checkRun(sessions, 'lmEmbed', { input_ids: zeros('int64', [1, 1]) }, { inputs_embeds: [1, 1, H] });
  const lmFeeds: Record<string, ort.Tensor> = {
    inputs_embeds: zeros('float32', [1, 1, H]),
    attention_mask: new ort.Tensor('int64', BigInt64Array.from([1n]), [1, 1]),
    position_ids: zeros('int64', [1, 1]),
  };
  const lmExpected: Record<string, number[]> = { logits: [1, 1, vocabSize], hidden_states: [1, 1, H] };
  for (let i = 0; i < numLayers; i++) {
    for (const kv of ['key', 'value']) {
      lmFeeds[`past_key_values.${i}.${kv}`] = zeros('float32', [1, numHeads, 0, headDim]);
      lmExpected[`present.${i}.${kv}`] = [1, numHeads, 1, headDim];
    }
  }
  await checkRun(sessions, 'lm', lmFeeds, lmExpected);
  await checkRun(
    sessions,
    'imageEncoder',
    { pixel_values: zeros('float32', [1, 3, S, S]) },
    { pooler_output: [1, Dv] },
  );
  await checkRun(
    sessions,
    'visualPrefix',
    { pooled: zeros('float32', [1, Dv]) },
    { prefix: [1, m.gill.numVisualTokens, H] },
  );
  await checkRun(
    sessions,
    'imageRetrieval',
    { pooled: zeros('float32', [1, Dv]) },
    { embedding: [1, m.gill.retrievalDim] },
  );
  await checkRun(
    sessions,
    'textRetrieval',
    { hidden: zeros('float32', [1, H]) },
    { embedding: [1, m.gill.retrievalDim] },
  );
  await checkRun(
    sessions,
    'mapper',
    { hidden: zeros('float32', [1, r, H]), token_embeds: zeros('float32', [1, r, H]) },
    { cond: [1, L, d.conditioningDim] },
  );
  await checkRun(
    sessions,
    'decision',
    { hidden: zeros('float32', [1, H]), retrieval_score: zeros('float32', [1, 1]) },
    { logits: [1, 2] },
  );
  await checkRun(
    sessions,
    'textEncoder',
    { input_ids: zeros('int64', [1, L]) },
    { last_hidden_state: [1, L, d.conditioningDim] },
  );
  // Batch 2: the guidance loop runs the unconditional and conditional branches in one call.
  await checkRun(
    sessions,
    'unet',
    {
      sample: zeros('float32', [2, C, h, h]),
      timestep: zeros(inputType(sessions.unet, 'timestep'), [2]),
      encoder_hidden_states: zeros('float32', [2, L, d.conditioningDim]),
    },
    { noise_pred: [2, C, h, h] },
  );
  await checkRun(
    sessions,
    'vaeDecoder',
    { latent: zeros('float32', [1, C, h, h]) },
    { image: [1, 3, d.imageSize, d.imageSize] },
  );
}

/** Opens a bundle. Every problem surfaces here, at start, with the file and field named. */
export async function loadBundle(dirInput: string, options: LoadBundleOptions = {}): Promise<Bundle> {
  const dir = path.resolve(dirInput);
  const provider = options.executionProvider ?? 'cpu';
  const manifest = await readManifest(dir);
  const lmTokenizerJson = await readTokenizerJson(dir, manifest.lm.tokenizer, 'lm.tokenizer');
  const textTokenizerJson = await readTokenizerJson(
    dir,
    manifest.diffusion.textTokenizer,
    'diffusion.textTokenizer',
  );

  const opened: ort.InferenceSession[] = [];
  const closeAll = async () => {
    const sessions = opened.splice(0);
    await Promise.all(sessions.map((s) => s.release()));
  };
  try {
    const entries: [GraphName, ort.InferenceSession][] = [];
    // One at a time: loading is I/O and graph optimisation, and parallel loads only raise peak memory.
    for (const name of Object.keys(GRAPHS) as GraphName[]) {
      const session = await openSession(dir, manifest, name, { ...options, executionProvider: provider });
      opened.push(session);
      entries.push([name, session]);
    }
    const sessions = Object.fromEntries(entries) as unknown as BundleSessions;
    if (options.warmUp !== false) await warmUp(sessions, manifest);
    return {
      dir,
      manifest,
      sessions,
      lmTokenizerJson,
      textTokenizerJson,
      executionProvider: provider,
      threads: options.threads,
      decisionUsesRetrievalScore: sessions.decision.inputNames.includes('retrieval_score'),
      close: closeAll,
    };
  } catch (error) {
    await closeAll();
    throw error;
  }
}
