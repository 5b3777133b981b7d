import type { Attachment } from '../core/turn.ts';
import type { SlackFile } from './threads.ts';

/**
 * Slack's message markup in both directions: what people wrote becomes plain text for the model, and what
 * the bot writes is escaped so that model output can never turn into a mention, @channel or a link.
 */

/** Plain text of a message: the bot's own mention removed, other references made readable, entities decoded. */
export function plainText(text: string, botUserId: string): string {
  return text
    .replace(new RegExp(`<@${botUserId}(?:\\|[^>]*)?>`, 'g'), '')
    .replace(/<@([A-Z0-9]+)(?:\|([^>]*))?>/g, (_, id: string, name?: string) => `@${name ?? id}`)
    .replace(/<#([A-Z0-9]+)(?:\|([^>]*))?>/g, (_, id: string, name?: string) => `#${name || id}`)
    .replace(/<!(here|channel|everyone)(?:\|[^>]*)?>/g, '@$1')
    .replace(/<!subteam\^[A-Z0-9]+(?:\|([^>]*))?>/g, (_, name?: string) => name ?? '@group')
    .replace(/<((?:https?|mailto):[^|>]+)\|([^>]+)>/g, '$2 ($1)')
    .replace(/<((?:https?|mailto):[^>]+)>/g, '$1')
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&amp;/g, '&')
    .replace(/[ \t]{2,}/g, ' ')
    .trim();
}

/** Escapes the three characters Slack treats as markup in message text. */
export function escapeText(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** A link in Slack's markup. */
export function slackLink(text: string, url: string): string {
  return `<${url.replace(/[|>]/g, encodeURIComponent)}|${escapeText(text).replace(/\|/g, '¦')}>`;
}

export function mentionsUser(text: string, userId: string): boolean {
  return new RegExp(`<@${userId}(?:\\|[^>]*)?>`).test(text);
}

/** The core's attachment id of a Slack file (its images are found by it when the file is deleted). */
export function slackAttachmentId(fileId: string): string {
  return `slack:${fileId}`;
}

/** A shared file as the core's Attachment. The download URL needs the bot token (files:read). */
export function toAttachment(file: SlackFile): Attachment {
  const name = file.name ?? file.title ?? file.id;
  return {
    id: slackAttachmentId(file.id),
    url: file.url_private_download ?? file.url_private ?? '',
    name,
    ...(file.size !== undefined ? { size: file.size } : {}),
    ...(file.mimetype ? { contentType: file.mimetype } : {}),
  };
}
