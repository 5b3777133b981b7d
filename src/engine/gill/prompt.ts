import { type GillTokenizer, plainText } from './tokenizer.ts';

/**
 * Turns a conversation into GILL's interleaved prompt (docs/gill-method.md §3 step 1, §5.9) and fits it into
 * the LM's context: images become k visual-prefix tokens each, text segments are tokenized
 * independently, BOS goes before the first text segment only, and when the whole does not fit, the most
 * recent part is kept.
 */

export type PromptPiece<I> = { type: 'text'; text: string } | { type: 'image'; image: I };

export interface ConversationItem<I> {
  role: 'user' | 'assistant';
  content: PromptPiece<I>;
}

/**
 * The dialogue layout GILL's notebook uses and the tiny bundle is trained on: each user turn is the
 * manifest's template (e.g. "Q: {text}\nA:"), each earlier reply follows as " {text}\n". Consecutive
 * items of one role form one turn: texts joined by a space, images placed where they were posted. `repairUserText`
 * (the bundle's typo repair) is applied to what people wrote, not to the model's own replies.
 */
export function dialoguePieces<I>(
  items: ConversationItem<I>[],
  template: string,
  repairUserText: (text: string) => string = (text) => text,
): PromptPiece<I>[] {
  const [before, after = ''] = template.split('{text}') as [string, string?];
  const pieces: PromptPiece<I>[] = [];
  let i = 0;
  while (i < items.length) {
    const role = items[i]!.role;
    const turn: PromptPiece<I>[] = [];
    for (; i < items.length && items[i]!.role === role; i++) {
      const content = items[i]!.content;
      if (content.type === 'image') {
        turn.push(content);
        continue;
      }
      const typed = plainText(content.text).trim();
      const text = role === 'user' ? repairUserText(typed) : typed;
      if (!text) continue;
      const last = turn.at(-1);
      if (last?.type === 'text') last.text += ` ${text}`;
      else turn.push({ type: 'text', text });
    }
    if (turn.length === 0) continue;
    const open = role === 'user' ? before : ' ';
    const close = role === 'user' ? after : '\n';
    pieces.push({ type: 'text', text: open }, ...turn, { type: 'text', text: close });
  }
  return mergeTexts(pieces);
}

function mergeTexts<I>(pieces: PromptPiece<I>[]): PromptPiece<I>[] {
  const out: PromptPiece<I>[] = [];
  for (const piece of pieces) {
    const last = out.at(-1);
    if (piece.type === 'text' && last?.type === 'text') last.text += piece.text;
    else if (piece.type === 'image' || piece.text) out.push(piece.type === 'text' ? { ...piece } : piece);
  }
  return out;
}

export type PromptSegment<I> = { type: 'tokens'; ids: number[] } | { type: 'image'; image: I };

export interface PromptBudget {
  /** Positions the prompt may take (BOS and visual tokens included). */
  maxTokens: number;
  maxImages: number;
  tokensPerImage: number;
}

export interface FittedPrompt<I> {
  segments: PromptSegment<I>[];
  /** Positions the prompt takes. */
  length: number;
  /** What was left out, in words for the user. */
  notes: string[];
}

/** The longest text a token is assumed to cover; only used to avoid tokenizing text that would be cut anyway. */
const MAX_CHARS_PER_TOKEN = 32;

export function fitPrompt<I>(
  pieces: PromptPiece<I>[],
  tokenizer: GillTokenizer,
  budget: PromptBudget,
): FittedPrompt<I> {
  const notes: string[] = [];
  let kept = pieces;

  const imageCount = kept.filter((p) => p.type === 'image').length;
  if (imageCount > budget.maxImages) {
    let drop = imageCount - budget.maxImages;
    kept = kept.filter((p) => !(p.type === 'image' && drop-- > 0));
    notes.push(
      `The conversation has ${imageCount} images; only the ${budget.maxImages} most recent were looked at.`,
    );
  }

  // Character pre-trim: 100k characters would take long to tokenize only to be cut.
  const charBudget = budget.maxTokens * MAX_CHARS_PER_TOKEN;
  let chars = 0;
  let charCut = false;
  for (let i = kept.length - 1; i >= 0; i--) {
    const piece = kept[i]!;
    if (piece.type !== 'text') continue;
    if (chars + piece.text.length > charBudget) {
      const tail = piece.text.slice(piece.text.length - (charBudget - chars));
      kept = [{ type: 'text', text: tail }, ...kept.slice(i + 1)];
      charCut = true;
      break;
    }
    chars += piece.text.length;
  }

  const bosCost = tokenizer.addsBos ? 1 : 0;
  let room = budget.maxTokens - bosCost;
  const fitted: PromptSegment<I>[] = [];
  let tokenCut = charCut;
  for (let i = kept.length - 1; i >= 0; i--) {
    const piece = kept[i]!;
    if (piece.type === 'image') {
      if (budget.tokensPerImage > room) {
        tokenCut = true;
        break;
      }
      room -= budget.tokensPerImage;
      fitted.unshift(piece);
      continue;
    }
    const ids = tokenizer.encodeText(piece.text, { bos: false, fromUser: false });
    if (ids.length > room) {
      if (room > 0) fitted.unshift({ type: 'tokens', ids: ids.slice(ids.length - room) });
      room = 0;
      tokenCut = true;
      break;
    }
    room -= ids.length;
    if (ids.length) fitted.unshift({ type: 'tokens', ids });
  }
  if (tokenCut) {
    const dropped = imagesIn(pieces) - imagesIn(fitted) - Math.max(imageCount - budget.maxImages, 0);
    notes.push(
      `The conversation is longer than the model can read at once (${budget.maxTokens} tokens); only the most recent part was read${dropped > 0 ? `, leaving out ${dropped} earlier image${dropped > 1 ? 's' : ''}` : ''}.`,
    );
  }

  if (bosCost) {
    const firstText = fitted.find((s) => s.type === 'tokens');
    if (firstText) firstText.ids.unshift(tokenizer.bosId);
    else fitted.push({ type: 'tokens', ids: [tokenizer.bosId] });
  }
  const length = fitted.reduce((n, s) => n + (s.type === 'tokens' ? s.ids.length : budget.tokensPerImage), 0);
  return { segments: fitted, length, notes };
}

function imagesIn(pieces: { type: string }[]): number {
  return pieces.filter((p) => p.type === 'image').length;
}
