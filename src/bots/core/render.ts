import { imageExtension } from '../../image-types.ts';
import type { JobProgress, ResultImage } from '../../jobs.ts';
import type { JobRecord } from '../../store/types.ts';
import { buttonsFor } from './buttons.ts';
import type { Eta } from './eta.ts';
import type { ButtonAction } from './turn.ts';

/**
 * Reply rendering: a finished job becomes text chunks within the platform's message limit (never cut
 * inside a code fence), image files with their provenance (generated, or retrieved with a link to the
 * original message), the decision's probabilities, notes, and the buttons that apply.
 */

export interface RenderStyle {
  /** Longest message the platform accepts: Discord 2000, Slack about 4000. */
  maxChars: number;
  /** A link in the platform's markup: Discord `[text](url)`, Slack `<url|text>`. */
  link(text: string, url: string): string;
}

export const DISCORD_MAX_CHARS = 2000;
/** Slack rejects long messages with msg_too_long around 4000 characters; keep a margin. */
export const SLACK_MAX_CHARS = 3900;

export interface RenderedImage {
  hash: string;
  mime: string;
  fileName: string;
  kind: ResultImage['kind'];
  /** One line saying where the image comes from. */
  caption: string;
}

export interface RenderedReply {
  /** Message texts in order, each within maxChars and never empty. */
  chunks: string[];
  images: RenderedImage[];
  buttons: ButtonAction[];
}

const FENCE = /^\s*(`{3,}|~{3,})/;

/** Cuts one over-long line at spaces where possible, else anywhere. */
function cutLine(line: string, max: number): string[] {
  const pieces: string[] = [];
  let rest = line;
  while (rest.length > max) {
    const space = rest.lastIndexOf(' ', max);
    const at = space > max / 2 ? space : max;
    pieces.push(rest.slice(0, at));
    rest = rest.slice(at).replace(/^ /, '');
  }
  pieces.push(rest);
  return pieces;
}

/**
 * Units that are never split: a whole fenced code block when it fits, else pieces of it that each
 * re-open and close the fence; and single lines of prose.
 */
function units(text: string, max: number): string[] {
  const lines = text.replace(/\r\n/g, '\n').split('\n');
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const open = FENCE.exec(line);
    if (!open) {
      out.push(...cutLine(line, max));
      continue;
    }
    const marker = open[1]!;
    const body: string[] = [];
    let j = i + 1;
    while (j < lines.length && !lines[j]!.trim().startsWith(marker)) body.push(lines[j++]!);
    const close = marker;
    i = j; // the closing line (or past the end for an unclosed fence, which gets closed here)
    const whole = [line.trimStart(), ...body, close].join('\n');
    if (whole.length <= max) {
      out.push(whole);
      continue;
    }
    const room = max - line.trimStart().length - close.length - 2;
    let piece: string[] = [];
    let size = 0;
    const flush = () => {
      if (piece.length) out.push([line.trimStart(), ...piece, close].join('\n'));
      piece = [];
      size = 0;
    };
    for (const codeLine of body.flatMap((l) => cutLine(l, room))) {
      if (size + codeLine.length + (piece.length ? 1 : 0) > room) flush();
      size += codeLine.length + (piece.length ? 1 : 0);
      piece.push(codeLine);
    }
    flush();
  }
  return out;
}

/** Splits text into messages of at most maxChars, at line breaks, never inside a code fence. */
export function splitMessage(text: string, maxChars: number): string[] {
  const chunks: string[] = [];
  let current = '';
  for (const unit of units(text, maxChars)) {
    const joined = current ? `${current}\n${unit}` : unit;
    if (joined.length <= maxChars) {
      current = joined;
      continue;
    }
    if (current.trim()) chunks.push(current.trimEnd());
    current = unit;
  }
  if (current.trim()) chunks.push(current.trimEnd());
  return chunks;
}

function percent(p: number): string {
  return `${Math.round(p * 100)}%`;
}

function caption(image: ResultImage, index: number, seed: number | undefined, style: RenderStyle): string {
  if (image.kind === 'generated') {
    return `Image ${index + 1}: generated${seed !== undefined ? ` (seed ${seed})` : ''}`;
  }
  const link = image.source?.permalink;
  const where = link ? style.link('original message', link) : 'the community index';
  return `Image ${index + 1}: retrieved from ${where} (similarity ${image.score.toFixed(2)})`;
}

/** Notes the core attached when it built the job (left-out messages, refused attachments). */
export function jobNotes(job: JobRecord): string[] {
  const notes = job.replyTarget.data.notes;
  return Array.isArray(notes) ? notes.filter((n): n is string => typeof n === 'string') : [];
}

/** The reply to a finished (completed or failed) job. */
export function renderReply(job: JobRecord, style: RenderStyle): RenderedReply {
  const notes = jobNotes(job);
  const buttons = buttonsFor(job);
  if (job.status === 'failed' || !job.result) {
    const text =
      job.error?.userFacing === true
        ? `⚠️ ${job.error.message}`
        : '⚠️ Something went wrong while working on this. It was logged; please try again.';
    return {
      chunks: splitMessage([text, ...notes.map((n) => `_${n}_`)].join('\n'), style.maxChars),
      images: [],
      buttons,
    };
  }
  const result = job.result;
  const lines: string[] = [];
  if (result.text.trim()) lines.push(result.text.trim());
  if (result.decision) {
    const { choice, pGenerate, pRetrieve } = result.decision;
    lines.push(
      choice === 'generate'
        ? `_Decided to generate (${percent(pGenerate)}) rather than retrieve (${percent(pRetrieve)})._`
        : `_Decided to retrieve (${percent(pRetrieve)}) rather than generate (${percent(pGenerate)})._`,
    );
  }
  const images = result.images.map((image, i) => ({
    hash: image.hash,
    mime: image.mime,
    fileName: `gill-${image.kind}-${i + 1}.${imageExtension(image.mime) ?? 'png'}`,
    kind: image.kind,
    caption: caption(image, i, result.seed, style),
  }));
  lines.push(...images.map((image) => image.caption));
  if (job.payload.kind === 'find' && images.length === 0) {
    lines.push('No matching images in this community’s index.');
  }
  for (const note of [...notes, ...result.notes]) lines.push(`_${note}_`);
  const chunks = splitMessage(lines.join('\n'), style.maxChars);
  // An image-only reply still needs a text on platforms that reject empty messages.
  return { chunks: chunks.length ? chunks : ['Done.'], images, buttons };
}

/** What a cancelled job's progress message turns into; `by` names who cancelled it when not the asker. */
export function renderCancelled(by?: string): string {
  return by ? `🚫 Cancelled by ${by}.` : '🚫 Cancelled.';
}

/**
 * How a platform writes an estimated end, after "ready": Discord's timestamp markup (shown relative and
 * kept current by the client), Slack's date markup (the local clock time, with a fallback), or plain words.
 */
export type EtaStyle = 'discord' | 'slack' | 'plain';

function about(ms: number): string {
  const seconds = Math.max(1, Math.round(ms / 1000));
  return seconds < 120 ? `in about ${seconds} s` : `in about ${Math.round(seconds / 60)} min`;
}

export function renderEta(eta: Eta, style: EtaStyle): string {
  const unix = Math.ceil(eta.at / 1000);
  switch (style) {
    case 'discord':
      return `<t:${unix}:R>`;
    case 'slack':
      return `<!date^${unix}^by {time_secs}|${about(eta.ms)}>`;
    case 'plain':
      return about(eta.ms);
  }
}

/** One line for a progress message, with the estimated end when there is one; each starts with its stage's mark (⏳ 💭 🔎 🎨 📦; 🚫 when cancelled). */
export function renderProgress(progress: JobProgress, eta?: string): string {
  const line = progressLine(progress);
  return eta ? `${line} (ready ${eta})` : line;
}

function progressLine(progress: JobProgress): string {
  switch (progress.stage) {
    case 'queued':
      return progress.position === 0
        ? '⏳ Next in line…'
        : `⏳ Waiting in the queue: ${progress.position} job${progress.position === 1 ? '' : 's'} ahead…`;
    case 'thinking':
      return '💭 Reading the conversation…';
    case 'retrieving':
      return '🔎 Searching the community’s images…';
    case 'generating':
      return `🎨 Drawing… step ${progress.step}/${progress.steps}`;
    case 'encoding':
      return '📦 Finishing the image…';
  }
}
