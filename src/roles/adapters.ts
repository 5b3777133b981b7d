import type { Config } from '../config.ts';
import type { Logger } from '../log.ts';
import type { GillMetrics } from '../metrics/metrics.ts';
import type { JobQueue } from '../queue/queue.ts';
import type { Store } from '../store/types.ts';

/**
 * Starts the chat surfaces the configuration asks for: Discord when its token is set, Slack when its
 * tokens are set, and (in `gill start`) the local playground. Each adapter is imported only when used.
 */

export interface RunningAdapter {
  name: string;
  /** Where a person reaches it, when that is a URL (the playground, Slack's events endpoint). */
  url?: string;
  stop(): Promise<void>;
}

export function discordConfigured(config: Config): boolean {
  return Boolean(config.DISCORD_TOKEN && config.DISCORD_APPLICATION_ID);
}

export function slackConfigured(config: Config): boolean {
  return Boolean(config.SLACK_BOT_TOKEN && (config.SLACK_SIGNING_SECRET || config.SLACK_APP_TOKEN));
}

export async function startAdapters(options: {
  config: Config;
  store: Store;
  queue: JobQueue;
  logger: Logger;
  playground: boolean;
  metrics?: GillMetrics;
}): Promise<RunningAdapter[]> {
  const { config, store, queue, logger, metrics } = options;
  const running: RunningAdapter[] = [];
  try {
    if (discordConfigured(config)) {
      const { startDiscord } = await import('../bots/discord/index.ts');
      const bot = await startDiscord({ config, store, queue, logger, metrics });
      running.push({ name: 'discord', stop: () => bot.stop() });
    }
    if (slackConfigured(config)) {
      const { startSlack } = await import('../bots/slack/index.ts');
      const slack = await startSlack({
        config,
        store,
        queue,
        logger,
        metrics,
        listen: { port: config.SLACK_PORT },
      });
      running.push({ name: 'slack', url: slack.eventsUrl, stop: () => slack.stop() });
    }
    if (options.playground) {
      const { startPlayground } = await import('../bots/playground/index.ts');
      const playground = await startPlayground({ config, store, queue, logger, metrics });
      running.push({ name: 'playground', url: playground.url, stop: () => playground.stop() });
    }
  } catch (error) {
    await stopAdapters(running, logger);
    throw error;
  }
  return running;
}

export async function stopAdapters(adapters: RunningAdapter[], logger: Logger): Promise<void> {
  const results = await Promise.allSettled(adapters.map((a) => a.stop()));
  results.forEach((result, i) => {
    if (result.status === 'rejected') {
      logger.warn({ err: result.reason, adapter: adapters[i]!.name }, 'adapter did not stop cleanly');
    }
  });
}
