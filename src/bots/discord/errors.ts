import { DiscordAPIError } from 'discord.js';

/**
 * Discord errors the bot can't fix by retrying, explained for the log and, where the bot can still
 * write, for the channel.
 */

export const MISSING_ACCESS = 50001;
export const MISSING_PERMISSIONS = 50013;
export const UNKNOWN_CHANNEL = 10003;
export const UNKNOWN_MESSAGE = 10008;
export const UNKNOWN_WEBHOOK = 10015;
export const INVALID_WEBHOOK_TOKEN = 50027;
export const THREAD_ALREADY_CREATED = 160004;
export const ALREADY_ACKNOWLEDGED = 40060;
export const UNKNOWN_INTERACTION = 10062;
export const TOO_MANY_OLD_EDITS = 30046;
export const INVALID_FORM_BODY = 50035;
export const REQUEST_TOO_LARGE = 40005;

export function discordCode(error: unknown): number | null {
  return error instanceof DiscordAPIError && typeof error.code === 'number' ? error.code : null;
}

/**
 * A sentence for a missing permission, naming what to grant; null when the error is something else.
 * `needed` names the permission the failed call required.
 */
export function permissionProblem(error: unknown, needed: string): string | null {
  const code = discordCode(error);
  if (code === MISSING_ACCESS) {
    return `I can't access this channel or thread (Discord error 50001): give me View Channel and ${needed} here (private threads need me added).`;
  }
  if (code === MISSING_PERMISSIONS) {
    return `I'm missing a permission here (Discord error 50013): give me ${needed} in this channel (check channel overrides and role order).`;
  }
  return null;
}

/** Errors after which a reply can never reach its channel: don't retry them forever. */
export function isUndeliverable(error: unknown): boolean {
  const code = discordCode(error);
  return code === MISSING_ACCESS || code === MISSING_PERMISSIONS || code === UNKNOWN_CHANNEL;
}
