import type { Config } from '../config.ts';
import { createLogger } from '../log.ts';
import { checkRedis, redactRedisUrl } from '../queue/redis.ts';
import { connect, describeDatabase } from '../store/index.ts';
import { discordConfigured, slackConfigured } from './adapters.ts';

/**
 * `gill doctor`: says which database, queue, model bundle and platforms are configured, whether each is
 * reachable, and what is missing. Exit code 1 when something configured does not work.
 */

type Check = { name: string; ok: boolean | null; lines: string[] };

const errorText = (error: unknown) => (error instanceof Error ? error.message : String(error));

async function checkDatabase(config: Config): Promise<Check> {
  const where = describeDatabase(config);
  try {
    const store = await connect(config, { logger: createLogger('silent') });
    await store.close();
    return { name: 'database', ok: true, lines: [`${where}: reachable, migrations applied`] };
  } catch (error) {
    return { name: 'database', ok: false, lines: [`${where}: ${errorText(error)}`] };
  }
}

async function checkQueue(config: Config): Promise<Check> {
  if (!config.REDIS_URL) {
    return {
      name: 'queue',
      ok: true,
      lines: ['in-process (REDIS_URL unset): fine for `gill start`; `gill bot` and `gill worker` need Redis'],
    };
  }
  try {
    await checkRedis(config.REDIS_URL);
    return { name: 'queue', ok: true, lines: [`Redis at ${redactRedisUrl(config.REDIS_URL)}: reachable`] };
  } catch (error) {
    return { name: 'queue', ok: false, lines: [errorText(error)] };
  }
}

async function checkModel(config: Config): Promise<Check> {
  const { loadBundle } = await import('../engine/bundle.ts');
  try {
    const bundle = await loadBundle(config.modelDir, {
      executionProvider: config.GILL_EXECUTION_PROVIDER,
      threads: config.GILL_THREADS,
    });
    const m = bundle.manifest;
    await bundle.close();
    return {
      name: 'model',
      ok: true,
      lines: [
        `${m.name} at ${config.modelDir}: every graph loads (${config.GILL_EXECUTION_PROVIDER})`,
        `LM hidden ${m.lm.hiddenSize}, ${m.lm.numLayers} layers, ${m.lm.maxPositions} positions; retrieval dim ${m.gill.retrievalDim}; image ${m.diffusion.imageSize}px`,
      ],
    };
  } catch (error) {
    return { name: 'model', ok: false, lines: [errorText(error)] };
  }
}

async function checkDiscord(config: Config): Promise<Check> {
  if (!discordConfigured(config)) {
    return {
      name: 'discord',
      ok: null,
      lines: ['not configured (set DISCORD_TOKEN and DISCORD_APPLICATION_ID)'],
    };
  }
  const { REST, Routes } = await import('discord.js');
  const { describeMessageContent } = await import('../bots/discord/intents.ts');
  const rest = new REST({
    ...(config.DISCORD_API_URL ? { api: config.DISCORD_API_URL } : {}),
    timeout: 5000,
  });
  rest.setToken(config.DISCORD_TOKEN!);
  const intent = describeMessageContent(config).lines;
  try {
    const me = (await rest.get(Routes.user('@me'))) as { username: string; id: string };
    return { name: 'discord', ok: true, lines: [`logged in as ${me.username} (${me.id})`, ...intent] };
  } catch (error) {
    return { name: 'discord', ok: false, lines: [`token check failed: ${errorText(error)}`, ...intent] };
  }
}

async function checkSlack(config: Config): Promise<Check> {
  if (!slackConfigured(config)) {
    return {
      name: 'slack',
      ok: null,
      lines: [
        'not configured (set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET, or SLACK_APP_TOKEN for Socket Mode)',
      ],
    };
  }
  const { webApi } = await import('@slack/bolt');
  const client = new webApi.WebClient(config.SLACK_BOT_TOKEN, {
    ...(config.SLACK_API_URL ? { slackApiUrl: config.SLACK_API_URL } : {}),
    retryConfig: { retries: 0 },
  });
  const mode = config.SLACK_APP_TOKEN
    ? 'Socket Mode (SLACK_APP_TOKEN)'
    : `HTTP events at :${config.SLACK_PORT}/slack/events`;
  try {
    const auth = await client.auth.test();
    return { name: 'slack', ok: true, lines: [`workspace ${auth.team} as ${auth.user}; ${mode}`] };
  } catch (error) {
    return { name: 'slack', ok: false, lines: [`auth.test failed: ${errorText(error)}; ${mode}`] };
  }
}

export async function runDoctor(config: Config): Promise<void> {
  const checks = await Promise.all([
    checkDatabase(config),
    checkQueue(config),
    checkModel(config),
    checkDiscord(config),
    checkSlack(config),
  ]);
  for (const check of checks) {
    const mark = check.ok === null ? '-' : check.ok ? 'ok' : 'FAIL';
    process.stdout.write(`${mark.padEnd(4)} ${check.name.padEnd(9)}${check.lines[0]}\n`);
    for (const line of check.lines.slice(1)) process.stdout.write(`${' '.repeat(14)}${line}\n`);
  }
  const platforms = checks.filter((c) => c.name === 'discord' || c.name === 'slack');
  if (platforms.every((c) => c.ok === null)) {
    process.stdout.write(
      `${' '.repeat(14)}no platform configured: \`gill start\` serves the local playground\n`,
    );
  }
  if (checks.some((c) => c.ok === false)) process.exitCode = 1;
}
