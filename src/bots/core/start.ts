import { hostname } from 'node:os';
import { DEFAULT_RETENTION_DAYS } from '../../config.ts';
import type { Logger } from '../../log.ts';
import type { GillMetrics } from '../../metrics/metrics.ts';
import type { JobQueue } from '../../queue/queue.ts';
import { cancelJob } from '../../queue/submit.ts';
import type { Store } from '../../store/types.ts';
import type { PlatformAdapter } from './adapter.ts';
import {
  type BotCore,
  type BotCoreOptions,
  type CancelOutcome,
  type CancelRequest,
  createBotCore,
  type SubmitOutcome,
} from './bot-core.ts';
import { startAdapterDelivery } from './delivery.ts';
import { startRetentionSweep } from './retention.ts';
import type { InboundTurn } from './turn.ts';

/**
 * What every platform's index.ts starts the same way: the core, the adapter on the delivery loop, and the
 * two paths each platform's inbound side uses, submit (turn in, job accepted and announced) and cancel
 * (job cancelled and shown so). The platforms differ only in how they read events and how they answer.
 */

export interface BotOptions {
  store: Store;
  queue: JobQueue;
  logger: Logger;
  adapter: PlatformAdapter;
  /** The core to use (shared with another adapter), or how to make this platform's own. */
  core: BotCore | Omit<BotCoreOptions, 'store' | 'queue' | 'logger'>;
  /** Delivery sweep interval (tests shorten it). */
  sweepIntervalMs?: number;
  /** Deliveries and rate-limit refusals are counted here when given. */
  metrics?: GillMetrics;
  /** Days deleted images are kept before the retention sweep removes them (GILL_RETENTION_DAYS). */
  retentionDays?: number;
  /** Between retention sweeps (tests shorten it). */
  retentionSweepIntervalMs?: number;
}

export interface Bot {
  core: BotCore;
  /**
   * Submits a turn; an accepted job's progress message is posted before its reply can go out. When the
   * platform says nobody could see it there, the job is cancelled and the outcome is a refusal saying why.
   */
  submit(turn: InboundTurn): Promise<SubmitOutcome>;
  /** Cancels a job for the person who pressed Cancel; a cancelled job's progress message says so. */
  cancel(request: CancelRequest): Promise<CancelOutcome>;
  /** Stops delivery (the platform's client is the platform's to stop). */
  stop(): Promise<void>;
}

function isCore(core: BotOptions['core']): core is BotCore {
  return typeof (core as BotCore).submit === 'function';
}

export function startBot(options: BotOptions): Bot {
  const { store, queue, logger, adapter } = options;
  const core = isCore(options.core)
    ? options.core
    : createBotCore({ store, queue, logger, metrics: options.metrics, ...options.core });
  const delivery = startAdapterDelivery({
    store,
    queue,
    logger,
    adapter,
    owner: `${hostname()}:${process.pid}:${adapter.platform}`,
    sweepIntervalMs: options.sweepIntervalMs,
    metrics: options.metrics,
  });

  const retention = startRetentionSweep({
    store,
    logger,
    retentionDays: options.retentionDays ?? DEFAULT_RETENTION_DAYS,
    intervalMs: options.retentionSweepIntervalMs,
  });

  async function announce(
    turn: InboundTurn,
    jobId: string,
    position: number | null,
  ): Promise<SubmitOutcome | null> {
    try {
      await delivery.announce(jobId, position);
      return null;
    } catch (error) {
      const refusal = adapter.unannounceable?.(error) ?? null;
      if (!refusal) {
        // The reply still comes through delivery, as a new message.
        logger.warn({ err: error, jobId }, 'could not post the progress message');
        return null;
      }
      // Nobody could see the answer: stop the job (store first, as every cancel) and say why.
      await cancelJob({ store, queue }, jobId);
      logger.info(
        { jobId, code: refusal.code, channelId: turn.channelId },
        'job cancelled: cannot post in channel',
      );
      return { status: 'refused', reason: 'bad_input', message: refusal.message };
    }
  }

  return {
    core,
    async submit(turn) {
      const release = delivery.hold(turn.idempotencyKey);
      try {
        const outcome = await core.submit(turn);
        if (outcome.status !== 'accepted') return outcome;
        return (await announce(turn, outcome.jobId, outcome.position)) ?? outcome;
      } finally {
        release();
      }
    },
    async cancel(request) {
      const outcome = await core.cancel(request);
      if (outcome.status === 'cancelled') await delivery.cancelled(outcome.job, outcome.progressText);
      return outcome;
    },
    async stop() {
      retention.stop();
      await delivery.close();
    },
  };
}
