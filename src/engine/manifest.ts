import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ACCEPTED_SCHEDULER_NAMES, parseSchedulerName } from './diffusion/schedulers/index.ts';

/**
 * The bundle manifest (models/README.md): its schema, in both formats, and the checks that need more than
 * one field. `gill-bundle/1` is what the tiny bundle uses; `gill-bundle/2` adds what a converted real model
 * needs: the LM's architecture, per-graph dtypes and checksums, external data files, the decision head's
 * inputs, provenance and licences.
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
const sha256 = z.string().regex(/^[0-9a-f]{64}$/, { message: 'must be a lowercase hex sha256' });
const bytes = z.number().int().nonnegative();

const lmV1 = z.object({
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
  /**
   * The words the LM was trained on, with counts (gill-lexicon/1): user text is typo-repaired against it
   * (src/engine/gill/spelling.ts). For a small LM with a closed vocabulary; absent: text is read as typed.
   */
  lexicon: file.optional(),
});

const vision = z.object({
  encoder: file,
  imageSize: dim,
  resize: z.literal('shortest-side-bicubic-center-crop'),
  mean: rgb,
  std: rgb.refine((s) => s.every((v) => v > 0), { message: 'every std must be > 0' }),
  pooledSize: dim,
});

const gill = z.object({
  visualPrefix: file,
  numVisualTokens: dim,
  imageRetrieval: file,
  textRetrieval: file,
  retrievalDim: dim,
  logitScale: z.number(),
  mapper: file,
  decision: file,
  /**
   * Optional: hidden [B,H] at a reply's last token -> logit [B,1], positive when a reply the LM wrote without an
   * [IMG] block should end with one (src/engine/gill/decode.ts).
   */
  replyImage: file.optional(),
});

const diffusion = z.object({
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
    // Optional, with diffusers' scheduler config names and meanings.
    timestepSpacing: z.enum(['linspace', 'leading', 'trailing']).optional(),
    stepsOffset: z.number().int().nonnegative().optional(),
    setAlphaToOne: z.boolean().optional(),
    clipSample: z.boolean().optional(),
  }),
});

const defaults = z.object({
  maxNewTokens: dim,
  temperature: z.number().min(0),
  topP: z.number().gt(0).max(1),
  retScaleFactor: z.number().positive(),
  genScaleFactor: z.number().positive(),
  /**
   * [IMG0] is only weighed as the reply's first token (with `retScaleFactor`), and its block is read right
   * after the prompt: whether a reply carries an image is decided where the bundle's dialogue rows train
   * [IMG0] (`Q: … A:[IMG0…]`) and the block sits where the paper's evaluation protocol reads it. The reply's
   * text is decoded from the same prompt without an image (decode.ts). Absent or false: [IMG0] may come
   * anywhere in the reply, as in the reference.
   */
  imgAtReplyStart: z.boolean().optional(),
  /**
   * How `retScaleFactor` / `genScaleFactor` boost [IMG0]'s logit: absent or true, |logit| × factor as the
   * reference does (a negative logit, a confident "no image", turns into a large positive one); false,
   * logit × factor, so a negative logit stays below every positive one.
   */
  imgScaleAbs: z.boolean().optional(),
  /**
   * With imgAtReplyStart: the image is decided at the reply's first token, and its [IMG] block is read after
   * the reply's text ("here is a big red star on the left [IMG0…]", where the reference's replies put it),
   * so the block reads the reply's own restatement of the request. Absent or false: read at the start.
   */
  imgAfterText: z.boolean().optional(),
  /**
   * Whether the LM reads the images of its own earlier answers. GILL conditions on its earlier outputs
   * (docs/gill-method.md §3), the default; a bundle whose dialogue training never put an image inside an
   * answer sets false, so its prompt keeps the `Q: … A: …` shape it was trained on (the answer's text stays).
   */
  ownImagesInContext: z.boolean().optional(),
  dialogueTemplate: z.string().includes('{text}'),
  scheduler: z
    .string()
    .refine((name) => parseSchedulerName(name) !== undefined, {
      message: `must be one of ${ACCEPTED_SCHEDULER_NAMES.join(', ')}`,
    })
    .transform((name) => parseSchedulerName(name)!),
  steps: dim,
  guidance: z.number().min(0),
  /**
   * When the decision head picks "retrieve" on its own but the closest gallery image is less similar than
   * this (cosine), the image is generated instead. The paper's first decision model saw the best retrieval
   * score as a feature; this keeps that safeguard for bundles whose decision head does not. Absent: no floor.
   */
  minRetrieveSimilarity: z.number().min(-1).max(1).optional(),
});

const manifestV1 = z.object({
  format: z.literal('gill-bundle/1'),
  name: z.string().min(1),
  lm: lmV1,
  vision,
  gill,
  diffusion,
  defaults,
});

export const graphDtypes = ['float32', 'float16', 'int8'] as const;
export type GraphDtype = (typeof graphDtypes)[number];

/** One ONNX graph file of a v2 bundle, and its external data file when its weights live outside it. */
const graphEntry = z.object({
  dtype: z.enum(graphDtypes),
  bytes,
  sha256,
  externalData: z
    .array(z.object({ file, bytes, sha256 }))
    .max(1, { message: 'one external data file per graph at most' })
    .default([]),
});
export type GraphEntry = z.infer<typeof graphEntry>;

const manifestV2 = manifestV1.extend({
  format: z.literal('gill-bundle/2'),
  lm: lmV1.extend({
    architecture: z.object({
      family: z.enum(['opt', 'gill-tiny']),
      numLayers: dim,
      hiddenSize: dim,
      numHeads: dim,
      ffnSize: dim,
      activation: z.enum(['relu', 'gelu']),
      /** OPT's learned positions start at index 2 (its embedding table has 2 extra rows). */
      positionOffset: z.number().int().nonnegative(),
      layerNorm: z.literal('pre'),
      tiedHead: z.literal(true),
    }),
    kvCacheDtype: z.enum(['float32', 'float16']),
  }),
  /** Keyed by the file name of each .onnx graph the other sections name. */
  graphs: z.record(file, graphEntry),
  decision: z.object({ usesRetrievalScore: z.boolean() }),
  provenance: z.object({ converter: z.string().min(1), inputs: z.record(z.string(), sha256) }),
  licences: z.record(z.string(), z.string().min(1)),
});

export const manifestSchema = z.discriminatedUnion('format', [manifestV1, manifestV2]);
export type Manifest = z.infer<typeof manifestSchema>;
export type ManifestV2 = z.infer<typeof manifestV2>;

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

/** Every .onnx file the manifest's sections name, by the field that names it. */
export function graphFiles(m: Manifest): Record<string, string> {
  return {
    'lm.embed': m.lm.embed,
    'lm.decoder': m.lm.decoder,
    'vision.encoder': m.vision.encoder,
    'gill.visualPrefix': m.gill.visualPrefix,
    'gill.imageRetrieval': m.gill.imageRetrieval,
    'gill.textRetrieval': m.gill.textRetrieval,
    'gill.mapper': m.gill.mapper,
    'gill.decision': m.gill.decision,
    ...(m.gill.replyImage ? { 'gill.replyImage': m.gill.replyImage } : {}),
    'diffusion.textEncoder': m.diffusion.textEncoder,
    'diffusion.unet': m.diffusion.unet,
    'diffusion.vaeDecoder': m.diffusion.vaeDecoder,
  };
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
  if (m.format === 'gill-bundle/2') problems.push(...v2Problems(m));
  if (problems.length)
    throw new BundleError(`model bundle: ${where} is inconsistent:\n  ${problems.join('\n  ')}`);
}

function v2Problems(m: ManifestV2): string[] {
  const problems: string[] = [];
  const arch = m.lm.architecture;
  for (const key of ['numLayers', 'hiddenSize', 'numHeads'] as const) {
    if (arch[key] !== m.lm[key])
      problems.push(`lm.architecture.${key} ${arch[key]} differs from lm.${key} ${m.lm[key]}`);
  }
  const named = new Set(Object.values(graphFiles(m)));
  for (const [field, rel] of Object.entries(graphFiles(m))) {
    if (!m.graphs[rel]) problems.push(`graphs has no entry for "${rel}" (named by ${field})`);
  }
  for (const rel of Object.keys(m.graphs)) {
    if (!named.has(rel)) problems.push(`graphs lists "${rel}", which no section of the manifest names`);
  }
  return problems;
}
