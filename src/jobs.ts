import { z } from 'zod';

/**
 * The job contract between the bot adapters (producers) and the engine workers (consumers).
 * Payloads are validated at enqueue: a payload that fails here is the user's input error, reported to
 * them and never retried. Images travel by content hash; their bytes live in the store's blobs.
 */

export const MAX_PROMPT_CHARS = 4000;
export const MAX_CONTEXT_CHARS = 100_000;

const contentHash = z.string().regex(/^[0-9a-f]{64}$/, 'must be a sha256 hex digest');

export const communitySchema = z.object({
  platform: z.enum(['discord', 'slack', 'playground', 'cli']),
  /** Discord guild id, Slack team id, or a local name. */
  externalId: z.string().min(1).max(100),
});
export type CommunityRef = z.infer<typeof communitySchema>;

export const contextItemSchema = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('text'),
    role: z.enum(['user', 'assistant']),
    text: z.string().max(MAX_CONTEXT_CHARS),
    author: z.string().max(200).optional(),
  }),
  z.object({
    type: z.literal('image'),
    role: z.enum(['user', 'assistant']),
    hash: contentHash,
    author: z.string().max(200).optional(),
  }),
]);
export type ContextItem = z.infer<typeof contextItemSchema>;

/**
 * Where a search is made from (the store's ViewerScope): the viewer's channel and, inside a thread, the
 * thread (channelId is then the thread's parent channel). Retrieval shows public images, and private ones
 * only inside their own channel or thread; a payload without a scope sees public images only.
 */
const placeId = z.string().min(1).max(200);
export const viewerScopeSchema = z.object({
  channelId: placeId,
  threadId: placeId.nullable().default(null),
});
export type ViewerScopeInput = z.input<typeof viewerScopeSchema>;

/** What the user wants from the decision: let the model decide, or force one side (the buttons). */
export const imageModeSchema = z.enum(['auto', 'retrieve', 'generate']);
export type ImageMode = z.infer<typeof imageModeSchema>;

const seed = z
  .number()
  .int()
  .min(0)
  .max(2 ** 31 - 1);
const steps = z.number().int().min(1).max(150);
const guidance = z.number().min(0).max(30);

export const chatPayloadSchema = z.object({
  kind: z.literal('chat'),
  community: communitySchema,
  context: z.array(contextItemSchema).min(1).max(200),
  imageMode: imageModeSchema.default('auto'),
  seed: seed.optional(),
  /** Retrieve/generate bias from the community config, added to the decision logit of "retrieve". */
  retrieveBias: z.number().min(-10).max(10).default(0),
  allowGeneration: z.boolean().default(true),
  allowRetrieval: z.boolean().default(true),
  /** Image ids already shown in this thread, skipped by retrieval ("more like this" asks for new ones). */
  excludeImageIds: z.array(z.string().max(64)).max(1000).default([]),
  /** Where the conversation is, so retrieval shows only what people there may see. */
  scope: viewerScopeSchema.optional(),
});

export const imaginePayloadSchema = z.object({
  kind: z.literal('imagine'),
  community: communitySchema,
  prompt: z
    .string()
    .trim()
    .min(1, 'the prompt is empty')
    .max(MAX_PROMPT_CHARS, `the prompt is over ${MAX_PROMPT_CHARS} characters`),
  seed: seed.optional(),
  steps: steps.optional(),
  guidance: guidance.optional(),
});

export const findPayloadSchema = z.object({
  kind: z.literal('find'),
  community: communitySchema,
  query: z
    .string()
    .trim()
    .min(1, 'the query is empty')
    .max(MAX_PROMPT_CHARS, `the query is over ${MAX_PROMPT_CHARS} characters`),
  k: z.number().int().min(1).max(20).default(4),
  excludeImageIds: z.array(z.string().max(64)).max(1000).default([]),
  /** Where /find was asked, so it shows only what people there may see. */
  scope: viewerScopeSchema.optional(),
});

export const indexPayloadSchema = z.object({
  kind: z.literal('index'),
  community: communitySchema,
  /** Row id in the images table whose embedding is to be computed. */
  imageId: z.string().min(1).max(64),
});

export const jobPayloadSchema = z.discriminatedUnion('kind', [
  chatPayloadSchema,
  imaginePayloadSchema,
  findPayloadSchema,
  indexPayloadSchema,
]);
export type JobPayload = z.infer<typeof jobPayloadSchema>;
export type JobPayloadInput = z.input<typeof jobPayloadSchema>;
export type JobKind = JobPayload['kind'];

/** Where the reply goes. Opaque to the engine; each adapter reads its own fields. */
export const replyTargetSchema = z.object({
  platform: z.enum(['discord', 'slack', 'playground', 'cli']),
  channelId: z.string().max(100),
  threadId: z.string().max(100).optional(),
  /** The message or interaction the reply answers, and the adapter's own extras (tokens, expiry...). */
  data: z.record(z.string(), z.unknown()).default({}),
});
export type ReplyTarget = z.infer<typeof replyTargetSchema>;

export const resultImageSchema = z.object({
  kind: z.enum(['generated', 'retrieved']),
  /** Content hash of the PNG (generated) or stored image (retrieved) in the store's blobs. */
  hash: contentHash,
  mime: z.string(),
  width: z.number().int(),
  height: z.number().int(),
  /** Cosine similarity with the retrieval embedding (both kinds, for ranking). */
  score: z.number(),
  /** For retrieved images: the indexed image and where it was posted. */
  source: z
    .object({
      imageId: z.string(),
      permalink: z.string().nullable(),
      authorId: z.string().nullable(),
      channelId: z.string().nullable(),
      messageId: z.string().nullable(),
    })
    .optional(),
});
export type ResultImage = z.infer<typeof resultImageSchema>;

export const jobResultSchema = z.object({
  kind: z.enum(['chat', 'imagine', 'find', 'index']),
  text: z.string().default(''),
  images: z.array(resultImageSchema).default([]),
  /** The decision head's probabilities, when an [IMG] block was produced. */
  decision: z
    .object({ choice: z.enum(['generate', 'retrieve']), pGenerate: z.number(), pRetrieve: z.number() })
    .nullable()
    .default(null),
  /** Things the user should know: context trimmed, images capped, retrieval empty... */
  notes: z.array(z.string()).default([]),
  /** Parameters actually used, so a "regenerate" button can vary the seed and keep the rest. */
  seed: z.number().int().optional(),
});
export type JobResult = z.infer<typeof jobResultSchema>;

/** Progress as the worker reports it and the bots display it. */
export type JobProgress =
  | { stage: 'queued'; position: number }
  | { stage: 'thinking' }
  | { stage: 'retrieving' }
  | { stage: 'generating'; step: number; steps: number; previewPng?: string }
  | { stage: 'encoding' };

/** An error whose message is meant for the person who caused it. Never retried. */
export class UserInputError extends Error {
  constructor(
    message: string,
    readonly code = 'bad_input',
  ) {
    super(message);
    this.name = 'UserInputError';
  }
}

export function parsePayload(input: unknown): JobPayload {
  const parsed = jobPayloadSchema.safeParse(input);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    const where = first?.path.length ? `${first.path.join('.')}: ` : '';
    throw new UserInputError(`Invalid request: ${where}${first?.message ?? 'unknown problem'}`);
  }
  return parsed.data;
}

/**
 * What the worker needs from the engine. The GILL implementation lives in src/engine/gill and
 * src/engine/diffusion; tests use a double from test/.
 */
export interface JobContext {
  /** Report progress; the worker forwards it to the queue (and so to the bot). */
  progress(update: JobProgress): void;
  /** Aborted when the job is cancelled or the worker shuts down. */
  signal: AbortSignal;
}

export interface Engine {
  run(payload: JobPayload, ctx: JobContext): Promise<JobResult>;
  close(): Promise<void>;
}
