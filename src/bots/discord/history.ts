import {
  type Message,
  MessageType,
  PermissionFlagsBits,
  type PermissionsBitField,
  type ThreadChannel,
} from 'discord.js';
import type { Attachment, ThreadMessage } from '../core/turn.ts';

/**
 * Reading Discord: messages as core ThreadMessages, and a thread's history (its starter message, which
 * lives in the parent channel, then the thread's own messages) for the conversation context. Only
 * people's messages: the bot's own turns come from its finished jobs (../core/conversation.ts), and other
 * bots are not conversation.
 */

/** Messages people write (plain and replies); system messages such as the thread starter stub are not conversation. */
const CONVERSATION_TYPES = new Set([MessageType.Default, MessageType.Reply]);

/** Messages read from a thread per turn (one REST page); the core keeps the community's contextMessages of them. */
const HISTORY_LIMIT = 100;

export function isAdmin(permissions: Readonly<PermissionsBitField> | null | undefined): boolean {
  return Boolean(permissions?.has(PermissionFlagsBits.ManageGuild));
}

export function attachmentsOf(message: Message): Attachment[] {
  return [...message.attachments.values()].map((a) => ({
    id: a.id,
    url: a.url,
    name: a.name,
    size: a.size,
    contentType: a.contentType ?? undefined,
  }));
}

/** The channel a message's thread belongs to, for messages in a thread (whose id is a channel id of its own). */
export function parentChannelOf(message: Message): string | undefined {
  const channel = message.channel;
  return channel.isThread() ? (channel.parentId ?? undefined) : undefined;
}

/** Mention markup of other people and channels as the names people see (`@Bob`, `#art`), as Slack's reads. */
function readable(message: Message, text: string): string {
  return text
    .replace(/<@!?(\d+)>/g, (_, id: string) => {
      const name =
        message.mentions.members?.get(id)?.displayName ?? message.mentions.users.get(id)?.displayName;
      return `@${name ?? id}`;
    })
    .replace(/<#(\d+)>/g, (_, id: string) => {
      const channel = message.guild?.channels.cache.get(id);
      return `#${channel?.name ?? id}`;
    });
}

export function toThreadMessage(message: Message, botId: string): ThreadMessage {
  const mention = new RegExp(`<@!?${botId}>`, 'g');
  return {
    id: message.id,
    role: 'user',
    authorId: message.author.id,
    authorName: message.member?.displayName ?? message.author.displayName,
    text: readable(message, message.content.replace(mention, '')).trim(),
    attachments: attachmentsOf(message),
  };
}

function isConversation(message: Message): boolean {
  return CONVERSATION_TYPES.has(message.type) && !message.author.bot;
}

const byId = (a: { id: string }, b: { id: string }) => (BigInt(a.id) < BigInt(b.id) ? -1 : 1);

/** The thread's conversation, oldest first, ending with `current`. */
export async function threadHistory(
  thread: ThreadChannel,
  current: Message,
  botId: string,
): Promise<ThreadMessage[]> {
  const fetched = await thread.messages.fetch({ limit: HISTORY_LIMIT });
  const messages = new Map<string, Message>([...fetched.values()].map((m) => [m.id, m]));
  messages.set(current.id, current);
  // A thread started from a message has that message's id; the message itself is in the parent channel.
  if (fetched.size < HISTORY_LIMIT) {
    const starter = await thread.fetchStarterMessage().catch(() => null);
    if (starter) messages.set(starter.id, starter);
  }
  return [...messages.values()]
    .filter((m) => isConversation(m) && BigInt(m.id) <= BigInt(current.id))
    .sort(byId)
    .map((m) => toThreadMessage(m, botId));
}
