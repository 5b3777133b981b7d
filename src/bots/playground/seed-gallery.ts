import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import sharp from 'sharp';
import { type CommunityRef, parsePayload } from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import type { JobQueue } from '../../queue/queue.ts';
import { submitJob } from '../../queue/submit.ts';
import type { Store } from '../../store/types.ts';

/**
 * The playground community's starting gallery: a few hundred named emoji from emoji-datasource-google,
 * indexed through ordinary index jobs, so `/find` and retrieval answer from the first minute. Seeding is
 * idempotent: images are keyed by content and source, index jobs by image, so a second start adds nothing.
 */

/** The embedded community the playground talks in. */
export const PLAYGROUND_COMMUNITY: CommunityRef = { platform: 'playground', externalId: 'local' };

/** Emoji seeded by default: spread evenly over the set, so every category is represented. */
export const DEFAULT_SEED_COUNT = 300;

/** Flags are country codes and components are skin-tone swatches: neither is a picture of its name. */
const SKIPPED_CATEGORIES = new Set(['Flags', 'Component']);

interface EmojiEntry {
  name?: string | null;
  short_name?: string;
  unified: string;
  image: string;
  category: string;
  sort_order: number;
  has_img_google?: boolean;
}

export interface SeedOutcome {
  /** Emoji offered to the gallery. */
  emoji: number;
  /** Gallery images that were not there before. */
  added: number;
  /** Index jobs created now (0 on every start after the first). */
  jobs: number;
}

function emojiDir(): string {
  const require = createRequire(import.meta.url);
  return path.dirname(require.resolve('emoji-datasource-google/package.json'));
}

/** Where an emoji is described: its row in Unicode's full emoji list. */
function permalink(unified: string): string {
  return `https://unicode.org/emoji/charts/full-emoji-list.html#${unified.toLowerCase().replaceAll('-', '_')}`;
}

/** Named emoji with a Google image, by sort order, one name each, `count` of them spread over the set. */
export function chooseEmoji(entries: EmojiEntry[], count: number): (EmojiEntry & { title: string })[] {
  const seen = new Set<string>();
  const usable = entries
    .filter((e) => e.has_img_google && !SKIPPED_CATEGORIES.has(e.category))
    .sort((a, b) => a.sort_order - b.sort_order)
    .flatMap((e) => {
      const title = (e.name || e.short_name || '').trim().toLowerCase();
      if (!title || seen.has(title)) return [];
      seen.add(title);
      return [{ ...e, title }];
    });
  if (count >= usable.length) return usable;
  const stride = usable.length / count;
  return Array.from({ length: count }, (_, i) => usable[Math.floor(i * stride)]!);
}

export async function seedGallery(options: {
  store: Store;
  queue: JobQueue;
  logger: Logger;
  community?: CommunityRef;
  /** How many emoji; DEFAULT_SEED_COUNT unless set. */
  count?: number;
}): Promise<SeedOutcome> {
  const { store, queue, logger } = options;
  const ref = options.community ?? PLAYGROUND_COMMUNITY;
  const community = await store.communities.ensure(ref);
  const dir = emojiDir();
  const entries = JSON.parse(await readFile(path.join(dir, 'emoji.json'), 'utf8')) as EmojiEntry[];
  const chosen = chooseEmoji(entries, options.count ?? DEFAULT_SEED_COUNT);
  const before = await store.images.count(community.id);
  let jobs = 0;
  for (const emoji of chosen) {
    const file = path.join(dir, 'img', 'google', '64', emoji.image);
    let bytes: Buffer;
    try {
      bytes = await readFile(file);
    } catch (error) {
      logger.warn({ err: error, file }, 'emoji image missing; skipped');
      continue;
    }
    const { width, height } = await sharp(bytes).metadata();
    const hash = await store.blobs.put(bytes, 'image/png');
    const image = await store.images.add(community.id, hash, {
      mime: 'image/png',
      width: width ?? 64,
      height: height ?? 64,
      channelId: null,
      messageId: null,
      authorId: null,
      permalink: permalink(emoji.unified),
      title: emoji.title,
    });
    if (image.hasEmbedding) continue;
    const { created } = await submitJob(
      { store, queue },
      {
        // The key the core uses for index jobs, so one image is never indexed twice.
        idempotencyKey: `index:${image.id}`,
        communityId: community.id,
        payload: parsePayload({ kind: 'index', community: ref, imageId: image.id }),
        replyTarget: { platform: ref.platform, channelId: 'gallery', data: {} },
      },
    );
    if (created) jobs++;
  }
  const added = (await store.images.count(community.id)) - before;
  const outcome = { emoji: chosen.length, added, jobs };
  if (added || jobs) logger.info({ community: ref, ...outcome }, 'seeded the gallery with emoji');
  return outcome;
}
