import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { ATTRIBUTES } from './attributes.ts';

/**
 * The conversations the thread evaluation replays. Each is a list of turns a person writes; the first is
 * a mention in a channel (the bot answers in a thread), later turns are in that thread, with or without
 * a mention. `expected` holds the attributes of the image the last turn asks for; attributes the
 * conversation leaves open are absent and not scored. Two file formats are read: this one
 * (bench/threads/conversations.json) and the held-out set the training code writes
 * (`gill-threads/1`, models/gill-tiny/eval/threads.json; its schema is in models/training/gill_tiny/threads.py).
 */

const attributeValue = z.string().min(1);

const turnSchema = z.object({
  text: z.string().min(1),
  /** Whether the bot is mentioned (always true for the first turn). */
  mention: z.boolean(),
  /** Whether the turn asks for an image: a statement or small talk must get none. */
  image: z.boolean(),
  /**
   * What the bot's reply should contain (the reply rubric: the stated attribute is acknowledged), one
   * entry per attribute, its accepted words separated by "|" ("big|large").
   */
  reply: z.array(z.string().min(1)).default([]),
  /** What the turn is, where the set says (the held-out set does): scores are also split by it. */
  type: z.enum(['request', 'statement', 'chat', 'story']).optional(),
});

const conversationSchema = z
  .object({
    id: z.string().min(1),
    kind: z.string().min(1),
    turns: z.array(turnSchema).min(1),
    expected: z.partialRecord(z.enum(ATTRIBUTES), attributeValue),
  })
  .refine((c) => c.turns[0]!.mention, { message: 'the first turn must mention the bot' })
  .refine((c) => c.turns.at(-1)!.image, { message: 'the last turn must ask for an image' });

const setSchema = z.object({ conversations: z.array(conversationSchema).min(1) });

/** The training code's held-out thread set (models/training/gill_tiny/threads.py). */
const heldOutSchema = z.object({
  format: z.literal('gill-threads/1'),
  conversations: z
    .array(
      z.object({
        id: z.string().min(1),
        kind: z.string().min(1),
        turns: z.array(z.string().min(1)).min(1),
        turn_types: z.array(z.enum(['request', 'statement', 'chat', 'story'])),
        expected: z.record(z.enum(ATTRIBUTES), attributeValue.nullable()),
        reply_mentions: z.array(z.array(z.string().min(1))),
      }),
    )
    .min(1),
});

/**
 * The held-out set in this module's shape. It does not say which later turns mention the bot, so every
 * other one does, starting with the second turn in even conversations and the third in odd ones: both
 * ways of talking in a thread are replayed, the same way on every run.
 */
function fromHeldOut(set: z.infer<typeof heldOutSchema>): unknown {
  return {
    conversations: set.conversations.map((c, i) => ({
      id: c.id,
      kind: c.kind,
      turns: c.turns.map((text, j) => ({
        text,
        mention: j === 0 || (i + j) % 2 === 1,
        image: c.turn_types[j] === 'request',
        reply: c.reply_mentions[j] ?? [],
        type: c.turn_types[j],
      })),
      expected: Object.fromEntries(Object.entries(c.expected).filter(([, v]) => v !== null)),
    })),
  };
}

export type ReplayTurn = z.infer<typeof turnSchema>;
export type ReplayConversation = z.infer<typeof conversationSchema>;

export const DEFAULT_SET = new URL('./conversations.json', import.meta.url).pathname;

export async function loadConversations(file = DEFAULT_SET): Promise<ReplayConversation[]> {
  const raw: unknown = JSON.parse(await readFile(file, 'utf8'));
  const heldOut = heldOutSchema.safeParse(raw);
  const parsed = setSchema.safeParse(heldOut.success ? fromHeldOut(heldOut.data) : raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new Error(`${file}: ${issue.path.join('.')}: ${issue.message}`);
  }
  const ids = new Set<string>();
  for (const conversation of parsed.data.conversations) {
    if (ids.has(conversation.id)) throw new Error(`${file}: conversation id ${conversation.id} is used twice`);
    ids.add(conversation.id);
  }
  return parsed.data.conversations;
}
