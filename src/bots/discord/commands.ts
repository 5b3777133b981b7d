import {
  ChannelType,
  type ChatInputCommandInteraction,
  InteractionContextType,
  PermissionFlagsBits,
  type RESTPostAPIChatInputApplicationCommandsJSONBody,
  SlashCommandBuilder,
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
      onOff(s.setName('indexing').setDescription(describe('indexing'))).addChannelOption((o) =>
        o
          .setName('channel')
          .setDescription('Channel (default: this one)')
          .addChannelTypes(ChannelType.GuildText, ChannelType.GuildAnnouncement),
      ),
    )
    .addSubcommand((s) => onOff(s.setName('generation').setDescription(describe('generation'))))
    .addSubcommand((s) => onOff(s.setName('retrieval').setDescription(describe('retrieval'))))
    .addSubcommand((s) =>
      s
        .setName('bias')
        .setDescription(describe('bias'))
        .addNumberOption((o) =>
          o
            .setName('value')
            .setDescription('-10 to 10')
            .setRequired(true)
            .setMinValue(CONFIG_RANGES.bias.min)
            .setMaxValue(CONFIG_RANGES.bias.max),
        ),
    )
    .addSubcommand((s) =>
      s
        .setName('feedback')
        .setDescription(describe('feedback'))
        .addStringOption((o) =>
          o
            .setName('action')
            .setDescription('What to do with the learned bias')
            .setRequired(true)
            .addChoices({ name: 'reset', value: 'reset' }),
        ),
    )
    .addSubcommand((s) =>
      s
        .setName('context')
        .setDescription(describe('context'))
        .addIntegerOption((o) =>
          o
            .setName('messages')
            .setDescription('Messages')
            .setRequired(true)
            .setMinValue(CONFIG_RANGES.contextMessages.min)
            .setMaxValue(CONFIG_RANGES.contextMessages.max),
        ),
    )
    .addSubcommand((s) =>
      s
        .setName('limits')
        .setDescription(describe('limits'))
        .addIntegerOption((o) =>
          o
            .setName('per-minute')
            .setDescription('Jobs per user per minute')
            .setMinValue(CONFIG_RANGES.userJobsPerMinute.min)
            .setMaxValue(CONFIG_RANGES.userJobsPerMinute.max),
        )
        .addIntegerOption((o) =>
          o
            .setName('concurrent')
            .setDescription('Jobs at once per user')
            .setMinValue(CONFIG_RANGES.userConcurrentJobs.min)
            .setMaxValue(CONFIG_RANGES.userConcurrentJobs.max),
        )
        .addIntegerOption((o) =>
          o
            .setName('community')
            .setDescription('Jobs at once in this server')
            .setMinValue(CONFIG_RANGES.communityConcurrentJobs.min)
            .setMaxValue(CONFIG_RANGES.communityConcurrentJobs.max),
        ),
    )
    .addSubcommand((s) => s.setName('forget').setDescription(describe('forget')));

  const forget = new SlashCommandBuilder()
    .setName('gill-forget')
    .setDescription('Remove the images you posted from GILL’s index of this server')
    .setContexts(InteractionContextType.Guild);

  return [imagine, find, gill, forget].map((c) => c.toJSON());
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
    case 'gill': {
      const sub = options.getSubcommand(false);
      if (sub === 'forget') return { kind: 'forget' };
      return { kind: 'config', change: validateConfigChange(configChange(interaction, sub)) };
    }
    default:
      throw new UserInputError(
        `Unknown command /${interaction.commandName}. The commands are /imagine, /find, /gill and /gill-forget; run \`gill discord register\` after an update.`,
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
      };
    case 'generation':
    case 'retrieval':
      return { setting: sub, enabled: options.getBoolean('enabled', true) };
    case 'bias':
      return { setting: 'bias', value: options.getNumber('value', true) };
    case 'feedback':
      return { setting: 'feedback-reset' };
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
