import { type ContextItem, MAX_CONTEXT_CHARS, UserInputError } from '../../jobs.ts';
import { FetchRefusedError } from './fetch-guard.ts';
import type { ImageIngest } from './images.ts';
import type { ThreadMessage } from './turn.ts';

/**
 * A thread becomes the model's context: interleaved text and images, newest kept first, within a
 * message count (the community's contextMessages), a token budget and an image budget. Whatever is left
 * out is said in a note the user sees, never dropped silently.
 */

export interface ContextBudget {
  /** Messages kept, counting the one being answered. */
  maxMessages: number;
  /** Estimated tokens of text plus images (see estimateTokens and IMAGE_TOKENS). */
  maxTokens: number;
  maxImages: number;
}

export const DEFAULT_CONTEXT_BUDGET: Omit<ContextBudget, 'maxMessages'> = { maxTokens: 2048, maxImages: 4 };

/** What one image costs in the budget: GILL feeds an image as a short visual prefix of embeddings. */
export const IMAGE_TOKENS = 8;

/**
 * About four characters per token for English under BPE tokenizers. The bot can't know the engine's
 * tokenizer; the engine trims precisely, this keeps requests near the right size.
 */
export function estimateTokens(text: string): number {
  return Math.ceil(text.length / 4);
}

/**
 * A message's text as the model reads it: runs of spaces and tabs made one space (platforms differ in
 * what a removed mention leaves behind), line breaks kept, ends trimmed.
 */
export function plainText(text: string): string {
  return text
    .replace(/[ \t]+/g, ' ')
    .replace(/ ?\n ?/g, '\n')
    .trim();
}

export interface BuiltContext {
  items: ContextItem[];
  /** Sentences for the user: messages left out, images capped or refused. */
  notes: string[];
}

interface Kept {
  message: ThreadMessage;
  text: string;
  hashes: string[];
}

export async function buildContext(
  messages: ThreadMessage[],
  deps: {
    images: ImageIngest;
    budget: ContextBudget;
    onRefused?: (error: FetchRefusedError, message: ThreadMessage) => void;
  },
): Promise<BuiltContext> {
  const { budget } = deps;
  const notes: string[] = [];
  const current = messages.at(-1);
  const kept: Kept[] = [];
  let tokens = 0;
  let images = 0;
  let imagesSkipped = 0;
  let leftOut = 0;

  const newestFirst = [...messages].reverse();
  for (const [i, message] of newestFirst.entries()) {
    if (kept.length >= budget.maxMessages) {
      leftOut = newestFirst.length - i;
      break;
    }
    let text = plainText(message.text);
    if (text.length > MAX_CONTEXT_CHARS) text = text.slice(-MAX_CONTEXT_CHARS);
    const textTokens = estimateTokens(text);
    if (tokens + textTokens > budget.maxTokens) {
      if (message !== current) {
        leftOut = newestFirst.length - i;
        break;
      }
      // The message being answered is always kept: its end, which is what is being asked.
      text = text.slice(-(budget.maxTokens * 4));
      notes.push('Your message was too long; only its last part was read.');
    }
    tokens += estimateTokens(text);

    const hashes: string[] = [];
    for (const hash of message.storedImages ?? []) {
      if (images >= budget.maxImages || tokens + IMAGE_TOKENS > budget.maxTokens) {
        imagesSkipped++;
        continue;
      }
      hashes.push(hash);
      images++;
      tokens += IMAGE_TOKENS;
    }
    for (const attachment of message.attachments) {
      if (images >= budget.maxImages || tokens + IMAGE_TOKENS > budget.maxTokens) {
        imagesSkipped++;
        continue;
      }
      try {
        const stored = await deps.images.ingest(attachment);
        hashes.push(stored.hash);
        images++;
        tokens += IMAGE_TOKENS;
      } catch (error) {
        if (!(error instanceof FetchRefusedError)) throw error;
        deps.onRefused?.(error, message);
        // Refusals in older messages were reported when those were answered.
        if (message === current) notes.push(`${error.message}; it was left out.`);
      }
    }
    kept.push({ message, text, hashes });
  }

  if (leftOut > 0) {
    notes.unshift(
      `Only the last ${kept.length} message${kept.length === 1 ? '' : 's'} of this thread were read; ${leftOut} older one${leftOut === 1 ? ' was' : 's were'} left out.`,
    );
  }
  if (imagesSkipped > 0) {
    notes.push(
      `Only the ${images} most recent image${images === 1 ? '' : 's'} of this thread were looked at.`,
    );
  }

  // Authors are left out: the model reads a dialogue of two roles, and names differ between platforms.
  const items: ContextItem[] = [];
  for (const { message, text, hashes } of kept.reverse()) {
    if (text) items.push({ type: 'text', role: message.role, text });
    for (const hash of hashes) items.push({ type: 'image', role: message.role, hash });
  }
  if (items.length === 0) {
    throw new UserInputError(
      notes.length
        ? `There is nothing I can read here. ${notes.join(' ')}`
        : 'There is nothing to answer: the message is empty.',
    );
  }
  return { items: items.slice(-200), notes };
}
