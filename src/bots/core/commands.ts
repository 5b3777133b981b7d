import { UserInputError } from '../../jobs.ts';
import type { CommunityConfig } from '../../store/types.ts';
import type { Command, ConfigChange } from './turn.ts';

/**
 * The `/gill` command family, shared by every platform: its subcommands, their ranges, parsing of the
 * text form (Slack and the playground pass `/gill <text>`; Discord builds ConfigChange from structured
 * options and validates it here), and how a change maps onto the community configuration.
 */

export interface SubcommandSpec {
  name: string;
  usage: string;
  description: string;
  /** False only for subcommands every user may run. */
  adminOnly: boolean;
}

export const GILL_SUBCOMMANDS: readonly SubcommandSpec[] = [
  { name: 'show', usage: 'show', description: 'show the current settings', adminOnly: true },
  {
    name: 'indexing',
    usage: 'indexing on|off [#channel] [purge]',
    description:
      "index a channel's images (default: this one) for retrieval; off with purge removes those indexed",
    adminOnly: true,
  },
  { name: 'generation', usage: 'generation on|off', description: 'allow generating images', adminOnly: true },
  {
    name: 'retrieval',
    usage: 'retrieval on|off',
    description: 'allow retrieving community images',
    adminOnly: true,
  },
  {
    name: 'bias',
    usage: 'bias <-10..10>',
    description: 'favour retrieving (> 0) or generating (< 0) when the model decides',
    adminOnly: true,
  },
  {
    name: 'context',
    usage: 'context <1..100>',
    description: 'thread messages the bot reads per answer',
    adminOnly: true,
  },
  {
    name: 'limits',
    usage: 'limits [per-minute=N] [concurrent=N] [community=N]',
    description: 'jobs per user per minute, concurrent jobs per user and per community',
    adminOnly: true,
  },
  {
    name: 'forget',
    usage: 'forget',
    description: 'remove your own images from the index, and index none of yours until index-me on',
    adminOnly: false,
  },
  {
    name: 'index-me',
    usage: 'index-me on|off',
    description: 'let your posted images be indexed again (on), or stop it (off)',
    adminOnly: false,
  },
];

export const CONFIG_RANGES = {
  bias: { min: -10, max: 10 },
  contextMessages: { min: 1, max: 100 },
  userJobsPerMinute: { min: 1, max: 120 },
  userConcurrentJobs: { min: 1, max: 20 },
  communityConcurrentJobs: { min: 1, max: 200 },
} as const;

export function gillHelp(): string {
  return GILL_SUBCOMMANDS.map((s) => `• \`/gill ${s.usage}\`: ${s.description}`).join('\n');
}

function onOff(word: string | undefined, name: string): boolean {
  const value = word?.toLowerCase();
  if (value === 'on' || value === 'true' || value === 'enable') return true;
  if (value === 'off' || value === 'false' || value === 'disable') return false;
  throw new UserInputError(`\`/gill ${name}\` takes "on" or "off", got "${word ?? ''}"`);
}

function numberIn(
  word: string | undefined,
  label: string,
  range: { min: number; max: number },
  integer: boolean,
) {
  const value = Number(word);
  if (
    word === undefined ||
    word.trim() === '' ||
    !Number.isFinite(value) ||
    (integer && !Number.isInteger(value))
  ) {
    throw new UserInputError(
      `${label} must be a ${integer ? 'whole number' : 'number'} from ${range.min} to ${range.max}, got "${word ?? ''}"`,
    );
  }
  if (value < range.min || value > range.max) {
    throw new UserInputError(`${label} must be from ${range.min} to ${range.max}, got ${value}`);
  }
  return value;
}

/** Channel references as typed: Discord `<#123>`, Slack `<#C123|name>` or `<#C123>`, or a bare id. */
function channelRef(word: string): string {
  const match = /^<#([A-Za-z0-9]+)(?:\|[^>]*)?>$/.exec(word);
  if (match) return match[1]!;
  if (/^[A-Za-z0-9]+$/.test(word)) return word;
  throw new UserInputError(`"${word}" is not a channel; mention it like #channel`);
}

const LIMIT_KEYS = {
  'per-minute': 'userJobsPerMinute',
  concurrent: 'userConcurrentJobs',
  community: 'communityConcurrentJobs',
} as const;

/** Checks a change against CONFIG_RANGES; throws UserInputError naming the bad value. */
export function validateConfigChange(change: ConfigChange): ConfigChange {
  switch (change.setting) {
    case 'bias':
      numberIn(String(change.value), 'The bias', CONFIG_RANGES.bias, false);
      break;
    case 'context':
      numberIn(String(change.messages), 'The context length', CONFIG_RANGES.contextMessages, true);
      break;
    case 'limits': {
      const given = (['userJobsPerMinute', 'userConcurrentJobs', 'communityConcurrentJobs'] as const).filter(
        (key) => change[key] !== undefined,
      );
      if (given.length === 0) {
        throw new UserInputError(
          '`/gill limits` needs at least one of per-minute=N, concurrent=N, community=N',
        );
      }
      for (const key of given) numberIn(String(change[key]), key, CONFIG_RANGES[key], true);
      break;
    }
    default:
      break;
  }
  return change;
}

/**
 * Parses the text after `/gill` (e.g. "indexing on #art", "bias -2", "limits per-minute=4").
 * `channelId` is the channel the command was typed in, the default for `indexing`.
 * Unknown or malformed subcommands throw UserInputError listing the valid ones.
 */
export function parseGillText(text: string, channelId: string): Command {
  const [name, ...args] = text.trim().split(/\s+/).filter(Boolean);
  const sub = name?.toLowerCase();
  switch (sub) {
    case undefined:
    case 'show':
    case 'help':
      return { kind: 'config', change: { setting: 'show' } };
    case 'forget':
      return { kind: 'forget' };
    case 'index-me':
      return { kind: 'index-me', enabled: onOff(args[0], 'index-me') };
    case 'indexing': {
      const purge = args.slice(1).some((a) => a.toLowerCase() === 'purge');
      const channel = args.slice(1).find((a) => a.toLowerCase() !== 'purge');
      return {
        kind: 'config',
        change: {
          setting: 'indexing',
          enabled: onOff(args[0], 'indexing'),
          channelId: channel ? channelRef(channel) : channelId,
          ...(purge ? { purge } : {}),
        },
      };
    }
    case 'generation':
    case 'retrieval':
      return { kind: 'config', change: { setting: sub, enabled: onOff(args[0], sub) } };
    case 'bias':
      return {
        kind: 'config',
        change: { setting: 'bias', value: numberIn(args[0], 'The bias', CONFIG_RANGES.bias, false) },
      };
    case 'context':
      return {
        kind: 'config',
        change: {
          setting: 'context',
          messages: numberIn(args[0], 'The context length', CONFIG_RANGES.contextMessages, true),
        },
      };
    case 'limits': {
      const change: Extract<ConfigChange, { setting: 'limits' }> = { setting: 'limits' };
      for (const arg of args) {
        const [key, value] = arg.split('=');
        const field = LIMIT_KEYS[key as keyof typeof LIMIT_KEYS];
        if (!field) {
          throw new UserInputError(
            `Unknown limit "${key}"; use ${Object.keys(LIMIT_KEYS)
              .map((k) => `${k}=N`)
              .join(', ')}`,
          );
        }
        change[field] = numberIn(value, key!, CONFIG_RANGES[field], true);
      }
      return { kind: 'config', change: validateConfigChange(change) };
    }
    default:
      throw new UserInputError(
        `Unknown subcommand "${name}". Valid ones:\n${gillHelp()}`,
        'unknown_subcommand',
      );
  }
}

/** The configuration patch a change makes (nothing for 'show'). */
export function configPatch(config: CommunityConfig, change: ConfigChange): Partial<CommunityConfig> {
  switch (change.setting) {
    case 'show':
      return {};
    case 'indexing': {
      const others = config.indexedChannels.filter((id) => id !== change.channelId);
      return { indexedChannels: change.enabled ? [...others, change.channelId] : others };
    }
    case 'generation':
      return { generationEnabled: change.enabled };
    case 'retrieval':
      return { retrievalEnabled: change.enabled };
    case 'bias':
      return { retrieveBias: change.value };
    case 'context':
      return { contextMessages: change.messages };
    case 'limits': {
      const { setting: _, ...limits } = change;
      return Object.fromEntries(Object.entries(limits).filter(([, v]) => v !== undefined));
    }
  }
}

/** The settings as a short list; `channel` formats a channel id as a platform mention. */
export function describeConfig(config: CommunityConfig, channel: (id: string) => string): string {
  const on = (b: boolean) => (b ? 'on' : 'off');
  return [
    `Generation: ${on(config.generationEnabled)} · Retrieval: ${on(config.retrievalEnabled)} · Bias: ${config.retrieveBias}`,
    `Context: last ${config.contextMessages} messages`,
    `Limits: ${config.userJobsPerMinute} jobs/minute and ${config.userConcurrentJobs} at once per user, ${config.communityConcurrentJobs} at once per community`,
    `Indexed channels: ${config.indexedChannels.length ? config.indexedChannels.map(channel).join(', ') : 'none'}`,
  ].join('\n');
}
