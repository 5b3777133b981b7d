import type {
  Message,
  MessageReaction,
  PartialMessage,
  PartialMessageReaction,
  PartialUser,
  User,
} from 'discord.js';
import type { ReactionRequest } from '../core/bot-core.ts';
import { parseButtonId } from '../core/buttons.ts';
import { reactionOfEmoji } from '../core/feedback.ts';

/**
 * 👍/👎 on the bot's replies as decision feedback (src/bots/core/feedback.ts). A reply names its job in
 * the custom ids of its buttons (every finished chat reply has at least Regenerate), so no lookup is needed.
 */

/** The job a message of the bot belongs to, from its buttons; null for messages without ours. */
export function jobOfMessage(message: Message | PartialMessage): string | null {
  const ids = JSON.stringify(message.components ?? []).match(/gill:[a-z]+:[\w-]+/g) ?? [];
  for (const id of ids) {
    const parsed = parseButtonId(id);
    if (parsed) return parsed.jobId;
  }
  return null;
}

/** The feedback a reaction event carries; null when it is not 👍/👎 by a person on a reply of this bot. */
export async function reactionRequest(
  reaction: MessageReaction | PartialMessageReaction,
  user: User | PartialUser,
  botId: string,
  added: boolean,
): Promise<ReactionRequest | null> {
  const kind = reactionOfEmoji(reaction.emoji.name ?? '');
  if (!kind || user.bot || user.id === botId) return null;
  // A partial message (sent before a restart) is fetched; one deleted meanwhile is no feedback.
  const message = reaction.message.partial
    ? await reaction.message.fetch().catch(() => null)
    : reaction.message;
  if (!message || message.author?.id !== botId || !message.guildId) return null;
  const jobId = jobOfMessage(message);
  if (!jobId) return null;
  return {
    community: { platform: 'discord', externalId: message.guildId },
    reply: { jobId },
    userId: user.id,
    reaction: kind,
    added,
  };
}
