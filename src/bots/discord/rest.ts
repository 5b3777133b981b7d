import type { RESTOptions } from 'discord.js';
import type { Config } from '../../config.ts';
import type { AllowedOrigin } from '../core/fetch-guard.ts';

/**
 * Where Discord is: the API (DISCORD_API_URL, to which discord.js appends /v10) and the hosts that serve
 * attachments. Production uses Discord's own; tests point both at the loopback fake.
 */

const DISCORD_FILE_ORIGINS = ['https://cdn.discordapp.com', 'https://media.discordapp.net'];

/**
 * Requests go through Node's own fetch, with Node's own FormData. discord.js's default (its undici 6
 * `request`) sends through the process-wide undici dispatcher, which the undici 7 that Slack's Socket Mode
 * loads replaces with its own; that one cannot read undici 6's form bodies, so every upload failed
 * ("action is not a function") in a process running both platforms.
 */
const makeRequest = fetch as unknown as RESTOptions['makeRequest'];

export function restOptions(
  config: Pick<Config, 'DISCORD_API_URL' | 'DISCORD_CDN_URL'>,
): Partial<RESTOptions> {
  return {
    makeRequest,
    ...(config.DISCORD_API_URL ? { api: config.DISCORD_API_URL.replace(/\/+$/, '') } : {}),
    ...(config.DISCORD_CDN_URL ? { cdn: config.DISCORD_CDN_URL.replace(/\/+$/, '') } : {}),
  };
}

/** Exactly the origins attachments may be downloaded from. */
export function attachmentOrigins(config: Pick<Config, 'DISCORD_CDN_URL'>): AllowedOrigin[] {
  const origins = config.DISCORD_CDN_URL ? [new URL(config.DISCORD_CDN_URL).origin] : DISCORD_FILE_ORIGINS;
  return origins.map((origin) => ({ origin }));
}
