import { type Config, ConfigError } from '../config.ts';
import { createLogger } from '../log.ts';
import { openBullJobQueue } from '../queue/bullmq.ts';
import { startReconciler } from '../queue/reconcile.ts';
import { openWhenAvailable, redactRedisUrl } from '../queue/redis.ts';
import { connectWithRetry, describeDatabase } from '../store/index.ts';
import { discordConfigured, slackConfigured, startAdapters, stopAdapters } from './adapters.ts';
import { observe } from './observe.ts';
import { watchShutdown } from './shutdown.ts';

/** After the first signal the process ends within this, also when something fails to close. */
const SHUTDOWN_DEADLINE_MS = 30_000;

/**
 * `gill bot`: the platform adapters only. Jobs go to Redis for `gill worker` processes; replies are
 * delivered from the shared Postgres jobs table, so several bot processes never double-post.
 */
export async function runBot(config: Config): Promise<void> {
  const problems: string[] = [];
  if (!config.REDIS_URL)
    problems.push('REDIS_URL: required by `gill bot` (the queue its workers take jobs from)');
  if (!config.DATABASE_URL) {
    problems.push(
      'DATABASE_URL: required by `gill bot` (the Postgres database it shares with `gill worker`)',
    );
  }
  if (!discordConfigured(config) && !slackConfigured(config)) {
    problems.push(
      'DISCORD_TOKEN or SLACK_BOT_TOKEN: `gill bot` needs at least one platform (see README, "Adding Discord and Slack")',
    );
  }
  if (problems.length || !config.REDIS_URL) throw new ConfigError(problems);
  const redisUrl = config.REDIS_URL;
  const logger = createLogger(config.GILL_LOG_LEVEL).child({ role: 'bot' });
  const shutdown = watchShutdown(logger, SHUTDOWN_DEADLINE_MS);
  const observer = await observe(config, 'bot', logger);
  const { metrics } = observer;
  const store = await connectWithRetry(config, logger, { signal: shutdown.signal }).catch(
    async (error: unknown) => {
      await observer.close();
      throw error;
    },
  );
  observer.parts.store = store;
  try {
    const queue = await openWhenAvailable(() => openBullJobQueue({ redisUrl, logger }), logger, {
      signal: shutdown.signal,
    });
    observer.parts.queue = queue;
    const reconciler = startReconciler({ store, queue, logger, metrics });
    try {
      const adapters = await startAdapters({ config, store, queue, logger, playground: false, metrics });
      observer.parts.platforms = adapters.map((a) => a.name);
      logger.info(
        {
          database: describeDatabase(config),
          redis: redactRedisUrl(redisUrl),
          adapters: adapters.map((a) => a.name),
        },
        'bot is running',
      );
      const signal = await shutdown.requested;
      logger.info({ signal }, 'shutting down');
      await stopAdapters(adapters, logger);
    } finally {
      await reconciler.close();
      await queue.close();
    }
  } finally {
    await store.close();
    await observer.close();
  }
}
