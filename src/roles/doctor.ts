import { freemem, totalmem } from 'node:os';
import type { Config } from '../config.ts';
import { createLogger } from '../log.ts';
import { checkRedis, redactRedisUrl, redisEvictionPolicy } from '../queue/redis.ts';
import { connect, describeDatabase } from '../store/index.ts';
import { discordConfigured, slackConfigured } from './adapters.ts';

/**
 * `gill doctor`: says which database, queue, model bundle and platforms are configured, whether each is
 * reachable, and what is missing. Exit code 1 when something configured does not work.
 */

export type Check = { name: string; ok: boolean | null; lines: string[] };

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
    // Another policy lets Redis drop queued jobs under memory pressure: said, not failed, as the
    // reconciler puts such jobs back (README, "Scaling").
    const eviction = await redisEvictionPolicy(config.REDIS_URL);
    return {
      name: 'queue',
      ok: true,
      lines: [
        `Redis at ${redactRedisUrl(config.REDIS_URL)}: reachable`,
        eviction.ok ? eviction.message : `warning: ${eviction.message}`,
      ],
    };
  } catch (error) {
    return { name: 'queue', ok: false, lines: [errorText(error)] };
  }
}

/** Bytes in MB below a gigabyte, in GB above. */
const size = (bytes: number) =>
  bytes < 1e9 ? `${(bytes / 1e6).toFixed(1)} MB` : `${(bytes / 1e9).toFixed(bytes < 1e10 ? 2 : 1)} GB`;

/**
 * The model bundle: its format, size on disk, dtypes, whether this machine's memory holds its weights, then
 * a full load (checksums, every graph opened and warmed up) on the configured provider. A bundle larger than
 * the machine's memory is not loaded.
 */
export async function checkModel(config: Config): Promise<Check> {
  const { readManifest } = await import('../engine/manifest.ts');
  const { bundleFootprint } = await import('../engine/bundle-files.ts');
  const { loadBundle } = await import('../engine/bundle.ts');
  let lines: string[] = [];
  try {
    const m = await readManifest(config.modelDir);
    const footprint = await bundleFootprint(config.modelDir, m);
    const dtypes = new Map<string, number>();
    for (const g of footprint.graphs) dtypes.set(g.dtype, (dtypes.get(g.dtype) ?? 0) + 1);
    const dtypeText = [...dtypes].map(([dtype, n]) => `${dtype} ×${n}`).join(', ');
    const kv = m.format === 'gill-bundle/2' ? `; KV cache ${m.lm.kvCacheDtype}` : '';
    const total = totalmem();
    const free = freemem();
    const fits = footprint.weightBytes <= total;
    const room = !fits
      ? "not enough: the weights do not fit in this machine's memory"
      : footprint.weightBytes > free
        ? 'fits in total memory, but more than is free right now'
        : 'fits';
    lines = [
      `${m.name} (${m.format}) at ${config.modelDir}`,
      `${size(footprint.diskBytes)} on disk; graphs ${dtypeText}${kv}`,
      `memory: the weights take about ${size(footprint.weightBytes)}; this machine has ${size(total)}, ${size(free)} free: ${room}${config.GILL_EXECUTION_PROVIDER === 'cuda' ? ' (with cuda the weights go to GPU memory, which this does not check)' : ''}`,
      `LM ${m.format === 'gill-bundle/2' ? `${m.lm.architecture.family} ` : ''}hidden ${m.lm.hiddenSize}, ${m.lm.numLayers} layers, ${m.lm.maxPositions} positions; retrieval dim ${m.gill.retrievalDim}; image ${m.diffusion.imageSize}px; ${m.defaults.scheduler}, ${m.defaults.steps} steps, guidance ${m.defaults.guidance}`,
    ];
    if (m.format === 'gill-bundle/2') {
      const inputs = Object.entries(m.provenance.inputs).map(
        ([name, hash]) => `${name} ${hash.slice(0, 12)}…`,
      );
      lines.push(`converted by ${m.provenance.converter} from ${inputs.join(', ') || 'no listed inputs'}`);
      lines.push(
        `licences: ${Object.entries(m.licences)
          .map(([part, licence]) => `${part} ${licence}`)
          .join('; ')}`,
      );
    }
    if (!fits) return { name: 'model', ok: false, lines };
    const bundle = await loadBundle(config.modelDir, {
      executionProvider: config.GILL_EXECUTION_PROVIDER,
      threads: config.GILL_THREADS,
    });
    await bundle.close();
    lines[0] += `: every graph loads (${config.GILL_EXECUTION_PROVIDER})`;
    if (bundle.verified) {
      const { files, hashMs } = bundle.verified;
      lines.push(
        hashMs === null
          ? `${files} files: sizes match the manifest; checksums skipped (GILL_SKIP_CHECKSUMS=1)`
          : `${files} files: sizes and sha256 match the manifest (${(hashMs / 1000).toFixed(1)} s to hash; GILL_SKIP_CHECKSUMS=1 skips)`,
      );
    }
    return { name: 'model', ok: true, lines };
  } catch (error) {
    return { name: 'model', ok: false, lines: [...lines, errorText(error)] };
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
