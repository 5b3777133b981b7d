import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { type VerifyReport, verifyBundleFiles } from './bundle-files.ts';
import { float16Bits } from './float16.ts';
import { loadSpellingRepair, type SpellingRepair } from './gill/spelling.ts';
import { BundleError, type Manifest, type ManifestV2, readManifest } from './manifest.ts';
import { inputType } from './tensors.ts';

/**
 * Loads a model bundle (models/README.md): validates manifest.json and every file it names (for a
 * gill-bundle/2 also their sizes and checksums), opens one ONNX Runtime session per graph by path (so ONNX
 * Runtime reads a graph's external data file itself), checks each graph's input/output names against the
 * format, and runs every graph once on dummy inputs. The warm-up doubles as the dimension check: exported
 * graphs often declare symbolic dimensions, so the only reliable way to know a graph matches the manifest is
 * to run it.
 */

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
  /** The manifest's optional `gill.replyImage` (src/engine/gill/decode.ts); absent when it names none. */
  replyImage?: ort.InferenceSession;
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
  /** Typo repair against the manifest's `lm.lexicon`; null when the bundle has none. */
  spelling: SpellingRepair | null;
  executionProvider: 'cpu' | 'cuda';
  threads: number | undefined;
  /**
   * The decision graph also takes `retrieval_score` [B,1], the best gallery cosine for the [IMG0] (GILL's first
   * decision model): the manifest's `decision.usesRetrievalScore` in a v2 bundle (checked against the graph),
   * read from the graph in a v1 bundle.
   */
  decisionUsesRetrievalScore: boolean;
  /** What the v2 file check found (null for a v1 bundle, which lists no sizes or checksums). */
  verified: VerifyReport | null;
  close(): Promise<void>;
}

export interface LoadBundleOptions {
  executionProvider?: 'cpu' | 'cuda';
  /** Intra-op threads per session; ONNX Runtime picks when undefined. */
  threads?: number;
  /** Run each graph once on dummy inputs (checks dimensions; first real job is not slowed). Default true. */
  warmUp?: boolean;
  /**
   * Check the sha256 of every file a v2 manifest lists (sizes are always checked). Default: on unless the
   * environment sets GILL_SKIP_CHECKSUMS=1.
   */
  verifyChecksums?: boolean;
  /**
   * Let idle intra-op threads spin between ops (ONNX Runtime's default, true): a little faster on cores of
   * its own, much slower on cores shared with other busy processes.
   */
  spinWait?: boolean;
}

/** Dimensions of one tensor, by name. */
type Shapes = Record<string, number[]>;

/**
 * The contract of one graph: the manifest field naming its file, the inputs it must declare (with the
 * shapes it is warmed up with), the inputs it may declare, and the outputs it must declare (with the
 * shapes the warm-up inputs must give).
 */
interface GraphSpec {
  manifestField: string;
  /** The graph's file; undefined for an optional graph the manifest leaves out. */
  file: (m: Manifest) => string | undefined;
  inputs: (m: Manifest) => Shapes;
  /** Inputs the graph may leave out (the engine feeds only what the graph declares). */
  optionalInputs?: (m: Manifest) => Shapes;
  outputs: (m: Manifest) => Shapes;
}

/** The KV cache tensors of every layer, `${prefix}.{i}.key|value`, each of `dims`. */
const kvShapes = (m: Manifest, prefix: string, dims: number[]): Shapes =>
  Object.fromEntries(
    Array.from({ length: m.lm.numLayers }, (_, i) => [
      [`${prefix}.${i}.key`, dims],
      [`${prefix}.${i}.value`, dims],
    ]).flat(),
  );

// Warm-up shapes are batch 1 and one position, except the UNet's batch 2: the guidance loop runs the
// unconditional and conditional branches in one call.
const GRAPHS: Record<GraphName, GraphSpec> = {
  lmEmbed: {
    manifestField: 'lm.embed',
    file: (m) => m.lm.embed,
    inputs: () => ({ input_ids: [1, 1] }),
    outputs: (m) => ({ inputs_embeds: [1, 1, m.lm.hiddenSize] }),
  },
  lm: {
    manifestField: 'lm.decoder',
    file: (m) => m.lm.decoder,
    inputs: (m) => ({
      inputs_embeds: [1, 1, m.lm.hiddenSize],
      attention_mask: [1, 1],
      ...kvShapes(m, 'past_key_values', [1, m.lm.numHeads, 0, m.lm.headDim]),
    }),
    optionalInputs: () => ({ position_ids: [1, 1] }),
    outputs: (m) => ({
      logits: [1, 1, m.lm.vocabSize],
      hidden_states: [1, 1, m.lm.hiddenSize],
      ...kvShapes(m, 'present', [1, m.lm.numHeads, 1, m.lm.headDim]),
    }),
  },
  imageEncoder: {
    manifestField: 'vision.encoder',
    file: (m) => m.vision.encoder,
    inputs: (m) => ({ pixel_values: [1, 3, m.vision.imageSize, m.vision.imageSize] }),
    outputs: (m) => ({ pooler_output: [1, m.vision.pooledSize] }),
  },
  visualPrefix: {
    manifestField: 'gill.visualPrefix',
    file: (m) => m.gill.visualPrefix,
    inputs: (m) => ({ pooled: [1, m.vision.pooledSize] }),
    outputs: (m) => ({ prefix: [1, m.gill.numVisualTokens, m.lm.hiddenSize] }),
  },
  imageRetrieval: {
    manifestField: 'gill.imageRetrieval',
    file: (m) => m.gill.imageRetrieval,
    inputs: (m) => ({ pooled: [1, m.vision.pooledSize] }),
    outputs: (m) => ({ embedding: [1, m.gill.retrievalDim] }),
  },
  textRetrieval: {
    manifestField: 'gill.textRetrieval',
    file: (m) => m.gill.textRetrieval,
    inputs: (m) => ({ hidden: [1, m.lm.hiddenSize] }),
    outputs: (m) => ({ embedding: [1, m.gill.retrievalDim] }),
  },
  mapper: {
    manifestField: 'gill.mapper',
    file: (m) => m.gill.mapper,
    inputs: (m) => {
      const img = [1, m.lm.imgTokenIds.length, m.lm.hiddenSize];
      return { hidden: img, token_embeds: img };
    },
    outputs: (m) => ({ cond: [1, m.diffusion.textMaxLength, m.diffusion.conditioningDim] }),
  },
  decision: {
    manifestField: 'gill.decision',
    file: (m) => m.gill.decision,
    inputs: (m) => ({ hidden: [1, m.lm.hiddenSize] }),
    optionalInputs: () => ({ retrieval_score: [1, 1] }),
    outputs: () => ({ logits: [1, 2] }),
  },
  textEncoder: {
    manifestField: 'diffusion.textEncoder',
    file: (m) => m.diffusion.textEncoder,
    inputs: (m) => ({ input_ids: [1, m.diffusion.textMaxLength] }),
    outputs: (m) => ({ last_hidden_state: [1, m.diffusion.textMaxLength, m.diffusion.conditioningDim] }),
  },
  unet: {
    manifestField: 'diffusion.unet',
    file: (m) => m.diffusion.unet,
    inputs: (m) => {
      const d = m.diffusion;
      return {
        sample: [2, d.latentChannels, d.latentSize, d.latentSize],
        timestep: [2],
        encoder_hidden_states: [2, d.textMaxLength, d.conditioningDim],
      };
    },
    outputs: (m) => {
      const d = m.diffusion;
      return { noise_pred: [2, d.latentChannels, d.latentSize, d.latentSize] };
    },
  },
  replyImage: {
    manifestField: 'gill.replyImage',
    file: (m) => m.gill.replyImage,
    inputs: (m) => ({ hidden: [1, m.lm.hiddenSize] }),
    outputs: () => ({ logit: [1, 1] }),
  },
  vaeDecoder: {
    manifestField: 'diffusion.vaeDecoder',
    file: (m) => m.diffusion.vaeDecoder,
    inputs: (m) => {
      const d = m.diffusion;
      return { latent: [1, d.latentChannels, d.latentSize, d.latentSize] };
    },
    outputs: (m) => ({ image: [1, 3, m.diffusion.imageSize, m.diffusion.imageSize] }),
  },
};

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
  rel: string,
  options: LoadBundleOptions,
): Promise<ort.InferenceSession> {
  const spec = GRAPHS[name];
  const full = await requireFile(dir, rel, spec.manifestField);
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(full, sessionOptions(options));
  } catch (error) {
    const hint =
      options.executionProvider === 'cuda'
        ? "\nGILL_EXECUTION_PROVIDER=cuda needs onnxruntime-node's CUDA binaries (ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node, see README) and CUDA 12 with cuDNN 9 on the host"
        : '';
    throw new BundleError(
      `model bundle: ${spec.manifestField} ${full} cannot be loaded by ONNX Runtime: ${(error as Error).message}${hint}`,
    );
  }
  const required = Object.keys(spec.inputs(m));
  const missingIn = required.filter((n) => !session.inputNames.includes(n));
  const allowedIn = new Set([...required, ...Object.keys(spec.optionalInputs?.(m) ?? {})]);
  const extraIn = session.inputNames.filter((n) => !allowedIn.has(n));
  const missingOut = Object.keys(spec.outputs(m)).filter((n) => !session.outputNames.includes(n));
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

/** A tensor of ones (a valid token id, mask value and timestep alike) of the type the graph declares. */
function ones(type: ort.Tensor.Type, dims: number[]): ort.Tensor {
  const size = dims.reduce((a, b) => a * b, 1);
  if (type === 'int64') return new ort.Tensor('int64', new BigInt64Array(size).fill(1n), dims);
  if (type === 'int32') return new ort.Tensor('int32', new Int32Array(size).fill(1), dims);
  if (type === 'float16') return new ort.Tensor('float16', new Uint16Array(size).fill(float16Bits(1)), dims);
  return new ort.Tensor('float32', new Float32Array(size).fill(1), dims);
}

function shapeError(field: string, output: string, got: readonly number[], want: number[]): BundleError {
  return new BundleError(
    `model bundle: ${field} output "${output}" has shape [${got.join(',')}], the manifest implies [${want.join(',')}]`,
  );
}

/** Runs one graph on its spec's warm-up inputs (those it declares) and checks the output shapes. */
async function checkRun(session: ort.InferenceSession, spec: GraphSpec, m: Manifest): Promise<void> {
  const shapes = { ...spec.inputs(m), ...spec.optionalInputs?.(m) };
  const feeds = Object.fromEntries(
    session.inputNames.map((name) => [name, ones(inputType(session, name), shapes[name]!)]),
  );
  let out: ort.InferenceSession.OnnxValueMapType;
  try {
    out = await session.run(feeds);
  } catch (error) {
    throw new BundleError(
      `model bundle: ${spec.manifestField} failed its warm-up run with manifest dimensions: ${(error as Error).message}`,
    );
  }
  for (const [output, want] of Object.entries(spec.outputs(m))) {
    const got = (out[output] as ort.Tensor).dims;
    if (got.length !== want.length || got.some((d, i) => d !== want[i]))
      throw shapeError(spec.manifestField, output, got, want);
  }
}

/** Runs every graph once with the manifest's dimensions and checks the shapes that come out. */
async function warmUp(sessions: BundleSessions, m: Manifest): Promise<void> {
  for (const name of Object.keys(GRAPHS) as GraphName[]) {
    const session = sessions[name];
    if (session) await checkRun(session, GRAPHS[name], m);
  }
}

/**
 * What a v2 manifest states about its graphs' inputs, checked against the graphs: the decision head's
 * retrieval_score input and the KV cache's element type.
 */
function checkDeclaredTypes(m: ManifestV2, sessions: BundleSessions, graphScore: boolean): void {
  const problems: string[] = [];
  if (m.decision.usesRetrievalScore !== graphScore) {
    problems.push(
      `decision.usesRetrievalScore is ${m.decision.usesRetrievalScore}, but ${m.gill.decision} ${graphScore ? 'takes a' : 'has no'} retrieval_score input`,
    );
  }
  const kvType = inputType(sessions.lm, 'past_key_values.0.key');
  if (kvType !== m.lm.kvCacheDtype) {
    problems.push(`lm.kvCacheDtype is ${m.lm.kvCacheDtype}, but ${m.lm.decoder} takes a ${kvType} KV cache`);
  }
  if (problems.length) throw new BundleError(`model bundle: ${problems.join('; ')}`);
}

/** Opens a bundle. Every problem surfaces here, at start, with the file and field named. */
export async function loadBundle(dirInput: string, options: LoadBundleOptions = {}): Promise<Bundle> {
  const dir = path.resolve(dirInput);
  const provider = options.executionProvider ?? 'cpu';
  const manifest = await readManifest(dir);
  const verified =
    manifest.format === 'gill-bundle/2'
      ? await verifyBundleFiles(dir, manifest, {
          checksums: options.verifyChecksums ?? process.env.GILL_SKIP_CHECKSUMS !== '1',
        })
      : null;
  const lmTokenizerJson = await readTokenizerJson(dir, manifest.lm.tokenizer, 'lm.tokenizer');
  const textTokenizerJson = await readTokenizerJson(
    dir,
    manifest.diffusion.textTokenizer,
    'diffusion.textTokenizer',
  );

  const spelling = manifest.lm.lexicon
    ? await loadSpellingRepair(await requireFile(dir, manifest.lm.lexicon, 'lm.lexicon'), 'lm.lexicon')
    : null;

  const opened: ort.InferenceSession[] = [];
  const closeAll = async () => {
    const sessions = opened.splice(0);
    await Promise.all(sessions.map((s) => s.release()));
  };
  try {
    const entries: [GraphName, ort.InferenceSession][] = [];
    // One at a time: loading is I/O and graph optimisation, and parallel loads only raise peak memory.
    for (const name of Object.keys(GRAPHS) as GraphName[]) {
      const rel = GRAPHS[name].file(manifest);
      if (rel === undefined) continue;
      const session = await openSession(dir, manifest, name, rel, {
        ...options,
        executionProvider: provider,
      });
      opened.push(session);
      entries.push([name, session]);
    }
    const sessions = Object.fromEntries(entries) as unknown as BundleSessions;
    const graphScore = sessions.decision.inputNames.includes('retrieval_score');
    if (manifest.format === 'gill-bundle/2') checkDeclaredTypes(manifest, sessions, graphScore);
    if (options.warmUp !== false) await warmUp(sessions, manifest);
    return {
      dir,
      manifest,
      sessions,
      lmTokenizerJson,
      textTokenizerJson,
      spelling,
      executionProvider: provider,
      threads: options.threads,
      decisionUsesRetrievalScore:
        manifest.format === 'gill-bundle/2' ? manifest.decision.usesRetrievalScore : graphScore,
      verified,
      close: closeAll,
    };
  } catch (error) {
    await closeAll();
    throw error;
  }
}
