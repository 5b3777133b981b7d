import { GatewayIntentBits } from 'discord.js';
import type { Config } from '../../config.ts';

/**
 * Gateway intents. Message Content is privileged (reviewed past 10,000 users); without it Discord blanks
 * the text and attachments of every guild message that does not mention the bot, so the bot still works
 * on mentions and slash commands but loses what describeMessageContent lists.
 */

export function gatewayIntents(config: Pick<Config, 'DISCORD_MESSAGE_CONTENT'>): GatewayIntentBits[] {
  return [
    GatewayIntentBits.Guilds,
    GatewayIntentBits.GuildMessages,
    // 👍/👎 on the bot's replies teach the retrieve/generate decision (not privileged).
    GatewayIntentBits.GuildMessageReactions,
    ...(config.DISCORD_MESSAGE_CONTENT ? [GatewayIntentBits.MessageContent] : []),
  ];
}

/** For `gill doctor`: whether the Message Content intent is requested, and what is lost without it. */
export function describeMessageContent(config: Pick<Config, 'DISCORD_MESSAGE_CONTENT'>): {
  enabled: boolean;
  lines: string[];
} {
  if (config.DISCORD_MESSAGE_CONTENT) {
    return {
      enabled: true,
      lines: [
        'Message Content intent: requested (DISCORD_MESSAGE_CONTENT=true). It must also be switched on in the',
        'Developer Portal (Bot → Privileged Gateway Intents), or Discord refuses the connection (close code 4014).',
      ],
    };
  }
  return {
    enabled: false,
    lines: [
      'Message Content intent: off (DISCORD_MESSAGE_CONTENT=false). Still working: @mentions (answered in a',
      'thread), /imagine, /find, /gill and the buttons. Lost:',
      '- follow-ups in a thread without @mentioning the bot are not seen (mention it in every message);',
      '- the thread context holds only messages that mention the bot, and the bot’s own;',
      '- images posted in indexed channels without a mention are not indexed (their attachments arrive empty).',
    ],
  };
}
