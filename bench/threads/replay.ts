import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { chooseEmoji, DEFAULT_SEED_COUNT } from '../../src/bots/playground/seed-gallery.ts';
import type { Config } from '../../src/config.ts';
import { createEngine } from '../../src/engine/index.ts';
import type { ContextItem, JobContext, JobPayload, JobResult } from '../../src/jobs.ts';
import type { Logger } from '../../src/log.ts';
import { MemoryJobQueue } from '../../src/queue/memory.ts';
import { runJobs } from '../../src/queue/worker.ts';
import type { JobRecord, Store } from '../../src/store/types.ts';
import { ATTRIBUTES, type Attribute, type Attributes, classifyImage } from './attributes.ts';
import type { ReplayConversation, ReplayTurn } from './conversations.ts';
import { type PlatformDriver, type PlatformName, startDriver } from './platforms.ts';

/**
 * Replays a conversation through one platform, turn after turn, each sent once the bot's reply to the
 * previous one is in the thread (as a person reads before answering), and scores it: the attributes of
 * the last turn's image, whether statements got an image, and whether replies name what was said.
 */

export interface TurnRecord {
  text: string;
  jobId: string;
  status: JobRecord['status'];
  reply: string;
  /** 'generated' / 'retrieved' per image of the reply. */
  images: JobResult['images'][number]['kind'][];
  decision: JobResult['decision'];
  /** The context the core built for the turn, as the job recorded it. */
  context: ContextItem[];
  askedImage: boolean;
  /** The set's turn type, when it has one. */
  type?: ReplayTurn['type'];
  /** Rubric entries the reply should contain (alternatives separated by "|"), and those it does. */
  rubric: { wanted: string[]; found: string[] };
}

export interface ConversationRun {
  id: string;
  kind: string;
  platform: PlatformName;
  turns: TurnRecord[];
  /** Attributes read from the last turn's first image; null when it has none. */
  attributes: Attributes | null;
  finalImageKind: 'generated' | 'retrieved' | null;
  /** Per expected attribute: whether the image has it. */
  hits: Partial<Record<Attribute, boolean>>;
}

/** Gallery images each community gets, as `gill start` seeds the playground's. */
export const GALLERY_SIZE = DEFAULT_SEED_COUNT;

/**
 * Gives every driver's community the emoji gallery `gill start` seeds (the same emoji), embedded once
 * per image with the engine's image tower, as the index jobs would, without running 300 jobs per community;
 * and lifts the per-user rate limits, which one person replaying hundreds of turns would hit.
 */
export async function prepareCommunities(
  store: Store,
  drivers: Pick<PlatformDriver, 'community'>[],
  embed: (bytes: Uint8Array) => Promise<Float32Array>,
): Promise<void> {
  const dir = path.dirname(createRequire(import.meta.url).resolve('emoji-datasource-google/package.json'));
  const entries = JSON.parse(await readFile(path.join(dir, 'emoji.json'), 'utf8'));
  const communities = await Promise.all(drivers.map((d) => store.communities.ensure(d.community)));
  for (const community of communities) {
    await store.communities.updateConfig(community.id, {
      userJobsPerMinute: 1000,
      userConcurrentJobs: 100,
      communityConcurrentJobs: 100,
    });
  }
  for (const emoji of chooseEmoji(entries, GALLERY_SIZE)) {
    const bytes = await readFile(path.join(dir, 'img', 'google', '64', emoji.image));
    const hash = await store.blobs.put(bytes, 'image/png');
    const embedding = await embed(bytes);
    for (const community of communities) {
      const image = await store.images.add(community.id, hash, {
        mime: 'image/png',
        width: 64,
        height: 64,
        channelId: null,
        messageId: null,
        authorId: null,
        permalink: null,
        title: emoji.title,
      });
      await store.images.setEmbedding(image.id, embedding);
    }
  }
}

const words = (text: string) => new Set(text.toLowerCase().match(/[a-z]+/g) ?? []);

function record(job: JobRecord, turn: ReplayTurn): TurnRecord {
  const { text, image: askedImage, reply: wanted, type } = turn;
  const reply = job.result?.text ?? '';
  const said = words(reply);
  return {
    text,
    type,
    jobId: job.id,
    status: job.status,
    reply,
    images: job.result?.images.map((i) => i.kind) ?? [],
    decision: job.result?.decision ?? null,
    context: job.payload.kind === 'chat' ? job.payload.context : [],
    askedImage,
    rubric: {
      wanted,
      found: wanted.filter((entry) => entry.split('|').some((w) => said.has(w.trim().toLowerCase()))),
    },
  };
}

export async function replayConversation(
  driver: PlatformDriver,
  store: Store,
  conversation: ReplayConversation,
): Promise<ConversationRun> {
  const [first, ...rest] = conversation.turns;
  const opened = await driver.open(first!.text);
  const turns = [record(opened.job, first!)];
  let last = opened.job;
  for (const turn of rest) {
    last = await driver.say(opened.thread, turn.text, turn.mention);
    turns.push(record(last, turn));
  }
  const image = last.result?.images[0];
  const blob = image ? await store.blobs.get(image.hash) : null;
  const attributes = blob ? await classifyImage(blob.bytes) : null;
  const hits: ConversationRun['hits'] = {};
  for (const attribute of ATTRIBUTES) {
    const want = conversation.expected[attribute];
    if (want !== undefined) hits[attribute] = attributes?.[attribute] === want;
  }
  return {
    id: conversation.id,
    kind: conversation.kind,
    platform: driver.name,
    turns,
    attributes,
    finalImageKind: image?.kind ?? null,
    hits,
  };
}

export interface PlatformScore {
  platform: PlatformName;
  conversations: number;
  /** Attribute accuracy in % over the conversations that state the attribute, and their mean. */
  accuracy: Record<Attribute | 'mean', number>;
  /** Last turns answered with a retrieved image, or none, instead of a generated one. */
  finalRetrieved: number;
  finalWithoutImage: number;
  /** Turns that ask for no image (statements, small talk) and got one. */
  statementsWithImage: number;
  statements: number;
  /** Turns that ask for no image, by the set's turn type (statement, chat, story), and those that got one. */
  withImageByType: Record<string, { withImage: number; turns: number }>;
  /** Turns that ask for an image and got one. */
  requestsWithImage: number;
  requests: number;
  /** Reply rubric: rubric words found in replies / wanted, in %. */
  replyRubric: number;
  rubricWords: number;
}

/** Scores one platform's runs; `turnFilter` limits the turn counts and the rubric to some turns. */
export function scorePlatform(
  platform: PlatformName,
  runs: ConversationRun[],
  turnFilter: (turn: TurnRecord) => boolean = () => true,
): PlatformScore {
  const mine = runs.filter((r) => r.platform === platform);
  const accuracy = {} as PlatformScore['accuracy'];
  for (const attribute of ATTRIBUTES) {
    const scored = mine.flatMap((r) => (r.hits[attribute] === undefined ? [] : [r.hits[attribute]]));
    accuracy[attribute] = scored.length ? (100 * scored.filter(Boolean).length) / scored.length : Number.NaN;
  }
  accuracy.mean = ATTRIBUTES.reduce((s, a) => s + accuracy[a], 0) / ATTRIBUTES.length;
  const turns = mine.flatMap((r) => r.turns).filter(turnFilter);
  const statements = turns.filter((t) => !t.askedImage);
  const requests = turns.filter((t) => t.askedImage);
  const wanted = turns.reduce((n, t) => n + t.rubric.wanted.length, 0);
  const found = turns.reduce((n, t) => n + t.rubric.found.length, 0);
  return {
    platform,
    conversations: mine.length,
    accuracy,
    finalRetrieved: mine.filter((r) => r.finalImageKind === 'retrieved').length,
    finalWithoutImage: mine.filter((r) => r.finalImageKind === null).length,
    statementsWithImage: statements.filter((t) => t.images.length > 0).length,
    statements: statements.length,
    withImageByType: byType(statements),
    requestsWithImage: requests.filter((t) => t.images.length > 0).length,
    requests: requests.length,
    replyRubric: wanted ? (100 * found) / wanted : Number.NaN,
    rubricWords: wanted,
  };
}

function byType(turns: TurnRecord[]): PlatformScore['withImageByType'] {
  const out: PlatformScore['withImageByType'] = {};
  for (const t of turns) {
    if (!t.type) continue;
    const entry = (out[t.type] ??= { withImage: 0, turns: 0 });
    entry.turns++;
    if (t.images.length > 0) entry.withImage++;
  }
  return out;
}

/** The context of every turn of a run, as one comparable string. */
export function contextsOf(run: ConversationRun): string {
  return JSON.stringify(run.turns.map((t) => t.context));
}

export const BOT_CONTEXTS = ['full', 'text', 'none'] as const;
export type BotContext = (typeof BOT_CONTEXTS)[number];

function withBotContext(payload: JobPayload, botContext: BotContext): JobPayload {
  if (payload.kind !== 'chat') return payload;
  const keep = (item: ContextItem) =>
    item.role === 'user' || (botContext === 'text' && item.type === 'text');
  return { ...payload, context: payload.context.filter(keep) };
}

export interface ReplaySession {
  drivers: PlatformDriver[];
  /** Replays every conversation `runs` times on every platform (platforms side by side, as people would). */
  replay(conversations: ReplayConversation[], runs: number): Promise<ConversationRun[][]>;
  close(): Promise<void>;
}

/**
 * The bot as `gill start` runs it — the real bundle behind the in-process queue and worker — with the
 * platforms' adapters in front, each community seeded with the emoji gallery.
 */
export async function startReplaySession(options: {
  config: Config;
  store: Store;
  logger: Logger;
  platforms: readonly PlatformName[];
  /** The communities' retrieve/generate bias (`/gill bias`); the default when unset. */
  retrieveBias?: number;
  /**
   * What of the bot's own turns the model reads (an ablation; the jobs still record the full context):
   * 'full' (the default) its text and images, 'text' its text only, 'none' nothing of it.
   */
  botContext?: BotContext;
}): Promise<ReplaySession> {
  const { config, store, logger } = options;
  const queue = new MemoryJobQueue({ logger });
  const engine = await createEngine(config, store, logger);
  const botContext = options.botContext ?? 'full';
  const runner: typeof engine =
    botContext === 'full'
      ? engine
      : Object.assign(Object.create(engine) as typeof engine, {
          run: (payload: JobPayload, ctx: JobContext) => engine.run(withBotContext(payload, botContext), ctx),
        });
  const worker = runJobs({ queue, store, engine: runner, logger });
  const drivers: PlatformDriver[] = [];
  const close = async () => {
    await Promise.all(drivers.map((d) => d.stop()));
    await worker.close();
    await queue.close();
    await engine.close();
  };
  try {
    const shared = { store, queue, logger, dataDir: config.dataDir };
    for (const platform of options.platforms) drivers.push(await startDriver(platform, shared));
    await prepareCommunities(store, drivers, (bytes) => engine.model.imageEmbedding(bytes));
    if (options.retrieveBias !== undefined) {
      for (const driver of drivers) {
        const community = await store.communities.ensure(driver.community);
        await store.communities.updateConfig(community.id, { retrieveBias: options.retrieveBias });
      }
    }
  } catch (error) {
    await close();
    throw error;
  }
  return {
    drivers,
    async replay(conversations, runs) {
      const results: ConversationRun[][] = [];
      for (let run = 0; run < runs; run++) {
        const perPlatform = await Promise.all(
          drivers.map(async (driver) => {
            const out: ConversationRun[] = [];
            for (const conversation of conversations) {
              out.push(await replayConversation(driver, store, conversation));
            }
            return out;
          }),
        );
        results.push(perPlatform.flat());
      }
      return results;
    },
    close,
  };
}

/**
 * How many conversations give the same context items on every platform (in the first run), and the same
 * on every platform and every run.
 */
export function determinism(
  results: ConversationRun[][],
  conversations: ReplayConversation[],
  platforms: readonly PlatformName[],
): { samePlatforms: number; sameRuns: number; differing: string[] } {
  let samePlatforms = 0;
  let sameRuns = 0;
  const differing: string[] = [];
  for (const conversation of conversations) {
    const contexts = results.map((run) =>
      platforms.map((p) => {
        const found = run.find((c) => c.id === conversation.id && c.platform === p);
        if (!found) throw new Error(`no run of ${conversation.id} on ${p}`);
        return contextsOf(found);
      }),
    );
    const platformsAgree = new Set(contexts[0]).size === 1;
    const runsAgree = new Set(contexts.flat()).size === 1;
    if (platformsAgree) samePlatforms++;
    if (runsAgree) sameRuns++;
    else differing.push(conversation.id);
  }
  return { samePlatforms, sameRuns, differing };
}
