import {
  ChannelType,
  type ChatInputCommandInteraction,
  InteractionContextType,
  PermissionFlagsBits,
  type RESTPostAPIChatInputApplicationCommandsJSONBody,
  SlashCommandBuilder,
  type SlashCommandIntegerOption,
  type SlashCommandNumberOption,
} from 'discord.js';
import { MAX_PROMPT_CHARS, UserInputError } from '../../jobs.ts';
import { CONFIG_RANGES, GILL_SUBCOMMANDS, validateConfigChange } from '../core/commands.ts';
import type { Command, ConfigChange } from '../core/turn.ts';

/**
 * The slash commands as Discord registers them, and their reading back into core Commands. `/gill` is
 * for admins (default_member_permissions: Manage Server; servers can widen it under Integrations, and
 * the core checks again). Permissions are per command on Discord, so forgetting one's own images, which
 * every user may do, is its own command, `/gill-forget`.
 */

const describe = (name: string) => GILL_SUBCOMMANDS.find((s) => s.name === name)!.description;

function onOff(sub: import('discord.js').SlashCommandSubcommandBuilder) {
  return sub.addBooleanOption((o) => o.setName('enabled').setDescription('on or off').setRequired(true));
}

/** A number option bounded by the range the core checks again (CONFIG_RANGES). */
function ranged<O extends SlashCommandIntegerOption | SlashCommandNumberOption>(
  option: O,
  name: string,
  description: string,
  range: { min: number; max: number },
  required = false,
): O {
  option.setName(name).setDescription(description).setRequired(required);
  option.setMinValue(range.min).setMaxValue(range.max);
  return option;
}

export function discordCommands(): RESTPostAPIChatInputApplicationCommandsJSONBody[] {
  const imagine = new SlashCommandBuilder()
    .setName('imagine')
    .setDescription('Generate an image from a prompt')
    .setContexts(InteractionContextType.Guild)
    .addStringOption((o) =>
      o.setName('prompt').setDescription('What to draw').setRequired(true).setMaxLength(MAX_PROMPT_CHARS),
    )
    .addIntegerOption((o) =>
      o
        .setName('seed')
        .setDescription('Noise seed, for repeatable images')
        .setMinValue(0)
        .setMaxValue(2 ** 31 - 1),
    )
    .addIntegerOption((o) =>
      o.setName('steps').setDescription('Denoising steps').setMinValue(1).setMaxValue(150),
    );

  const find = new SlashCommandBuilder()
    .setName('find')
    .setDescription('Find images posted in this server')
    .setContexts(InteractionContextType.Guild)
    .addStringOption((o) =>
      o.setName('query').setDescription('What to look for').setRequired(true).setMaxLength(MAX_PROMPT_CHARS),
    )
    .addIntegerOption((o) => o.setName('k').setDescription('How many images').setMinValue(1).setMaxValue(20));

  const gill = new SlashCommandBuilder()
    .setName('gill')
    .setDescription('Configure GILL for this server (admins)')
    .setContexts(InteractionContextType.Guild)
    .setDefaultMemberPermissions(PermissionFlagsBits.ManageGuild)
    .addSubcommand((s) => s.setName('show').setDescription(describe('show')))
    .addSubcommand((s) =>
      onOff(s.setName('indexing').setDescription(describe('indexing')))
        .addChannelOption((o) =>
          o
            .setName('channel')
            .setDescription('Channel (default: this one)')
            .addChannelTypes(ChannelType.GuildText, ChannelType.GuildAnnouncement),
        )
        .addBooleanOption((o) =>
          o
            .setName('purge')
            .setDescription('With off: also remove the images already indexed from the channel'),
        ),
    )
    .addSubcommand((s) => onOff(s.setName('generation').setDescription(describe('generation'))))
    .addSubcommand((s) => onOff(s.setName('retrieval').setDescription(describe('retrieval'))))
    .addSubcommand((s) =>
      s
        .setName('bias')
        .setDescription(describe('bias'))
        .addNumberOption((o) => ranged(o, 'value', '-10 to 10', CONFIG_RANGES.bias, true)),
    )
    .addSubcommand((s) =>
      s
        .setName('context')
        .setDescription(describe('context'))
        .addIntegerOption((o) => ranged(o, 'messages', 'Messages', CONFIG_RANGES.contextMessages, true)),
    )
    .addSubcommand((s) =>
      s
        .setName('limits')
        .setDescription(describe('limits'))
        .addIntegerOption((o) =>
          ranged(o, 'per-minute', 'Jobs per user per minute', CONFIG_RANGES.userJobsPerMinute),
        )
        .addIntegerOption((o) =>
          ranged(o, 'concurrent', 'Jobs at once per user', CONFIG_RANGES.userConcurrentJobs),
        )
        .addIntegerOption((o) =>
          ranged(o, 'community', 'Jobs at once in this server', CONFIG_RANGES.communityConcurrentJobs),
        ),
    )
    .addSubcommand((s) => s.setName('forget').setDescription(describe('forget')));

  const forget = new SlashCommandBuilder()
    .setName('gill-forget')
    .setDescription('Remove the images you posted from GILL’s index of this server')
    .setContexts(InteractionContextType.Guild);

  const indexMe = new SlashCommandBuilder()
    .setName('gill-index-me')
    .setDescription('Let GILL index the images you post (after /gill-forget), or stop it')
    .setContexts(InteractionContextType.Guild)
    .addBooleanOption((o) => o.setName('enabled').setDescription('on or off').setRequired(true));

  return [imagine, find, gill, forget, indexMe].map((c) => c.toJSON());
}

/** Reads a chat-input interaction as a core Command; throws UserInputError for anything unknown. */
export function commandFromInteraction(interaction: ChatInputCommandInteraction): Command {
  const options = interaction.options;
  switch (interaction.commandName) {
    case 'imagine':
      return {
        kind: 'imagine',
        prompt: options.getString('prompt', true),
        seed: options.getInteger('seed') ?? undefined,
        steps: options.getInteger('steps') ?? undefined,
      };
    case 'find':
      return {
        kind: 'find',
        query: options.getString('query', true),
        k: options.getInteger('k') ?? undefined,
      };
    case 'gill-forget':
      return { kind: 'forget' };
    case 'gill-index-me':
      return { kind: 'index-me', enabled: options.getBoolean('enabled', true) };
    case 'gill': {
      const sub = options.getSubcommand(false);
      if (sub === 'forget') return { kind: 'forget' };
      return { kind: 'config', change: validateConfigChange(configChange(interaction, sub)) };
    }
    default:
      throw new UserInputError(
        `Unknown command /${interaction.commandName}. The commands are /imagine, /find, /gill, /gill-forget and /gill-index-me; run \`gill discord register\` after an update.`,
        'unknown_command',
      );
  }
}

function configChange(interaction: ChatInputCommandInteraction, sub: string | null): ConfigChange {
  const options = interaction.options;
  switch (sub) {
    case 'show':
      return { setting: 'show' };
    case 'indexing':
      return {
        setting: 'indexing',
        enabled: options.getBoolean('enabled', true),
        channelId: options.getChannel('channel')?.id ?? interaction.channelId,
        purge: options.getBoolean('purge') ?? undefined,
      };
    case 'generation':
    case 'retrieval':
      return { setting: sub, enabled: options.getBoolean('enabled', true) };
    case 'bias':
      return { setting: 'bias', value: options.getNumber('value', true) };
    case 'context':
      return { setting: 'context', messages: options.getInteger('messages', true) };
    case 'limits':
      return {
        setting: 'limits',
        userJobsPerMinute: options.getInteger('per-minute') ?? undefined,
        userConcurrentJobs: options.getInteger('concurrent') ?? undefined,
        communityConcurrentJobs: options.getInteger('community') ?? undefined,
      };
    default:
      throw new UserInputError(
        `Unknown subcommand "${sub ?? ''}". Valid ones: ${GILL_SUBCOMMANDS.map((s) => s.name).join(', ')}. Run \`gill discord register\` after an update.`,
        'unknown_subcommand',
      );
  }
}
