import type { Logger } from '../../log.ts';
import type { GillMetrics } from '../../metrics/metrics.ts';
import type { JobQueue } from '../../queue/queue.ts';
import type { Store } from '../../store/types.ts';
import type { ContextBudget } from './context.ts';
import type { ImageIngest } from './images.ts';
import type { IndexingLimits } from './limits.ts';

/** What every part of the core (submission, config commands, cancel, indexing) works with. */
export interface CoreDeps {
  store: Store;
  queue: JobQueue;
  logger: Logger;
  images: ImageIngest;
  /** Indexing's own cap and per-person rate. */
  indexing: IndexingLimits;
  /** Token and image budget of a chat context; the message count comes from the community config. */
  budget: Omit<ContextBudget, 'maxMessages'>;
  /** How a channel id is written in the platform's markup, for configuration answers. */
  channelMention(channelId: string): string;
  /** How a user is named in the platform's markup (Discord and Slack `<@id>`), for Cancel answers. */
  userMention(userId: string, displayName: string | undefined): string;
  metrics?: GillMetrics;
}
