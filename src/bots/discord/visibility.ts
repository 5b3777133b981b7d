import { type Channel, ChannelType, PermissionFlagsBits } from 'discord.js';
import type { ViewerScope, Visibility } from '../../store/types.ts';

/**
 * Who can see a Discord channel, in the store's terms (README, "Security and reliability"): a private
 * thread, or a channel @everyone may not view (its permission overwrites for the guild's @everyone role,
 * over the role's own permissions), is private; so is anything whose permissions cannot be read.
 */

export function visibilityOf(channel: Channel): Visibility {
  if (channel.isDMBased()) return 'private';
  if (channel.type === ChannelType.PrivateThread) return 'private';
  const place = channel.isThread() ? channel.parent : channel;
  if (!place) return 'private';
  const everyone = place.guild.roles.everyone;
  return place.permissionsFor(everyone)?.has(PermissionFlagsBits.ViewChannel) ? 'public' : 'private';
}

/** Where someone in `channel` stands: a thread's parent channel and the thread, or the channel itself. */
export function scopeOf(channel: Channel): ViewerScope {
  if (channel.isThread()) return { channelId: channel.parentId ?? channel.id, threadId: channel.id };
  return { channelId: channel.id, threadId: null };
}
