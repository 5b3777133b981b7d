import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { ATTRIBUTES } from './attributes.ts';

/**
 * The conversations the thread evaluation replays. Each is a list of turns a person writes; the first is
 * a mention in a channel (the bot answers in a thread), later turns are in that thread, with or without
 * a mention. `expected` holds the attributes of the image the last turn asks for; attributes the
 * conversation leaves open are absent and not scored.
 */

const attributeValue = z.string().min(1);

const turnSchema = z.object({
  text: z.string().min(1),
  /** Whether the bot is mentioned (always true for the first turn). */
  mention: z.boolean(),
  /** Whether the turn asks for an image: a statement or small talk must get none. */
  image: z.boolean(),
  /** Words the bot's reply should contain (the reply rubric: the stated attribute is acknowledged). */
  reply: z.array(z.string().min(1)).default([]),
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

export type ReplayTurn = z.infer<typeof turnSchema>;
export type ReplayConversation = z.infer<typeof conversationSchema>;

export const DEFAULT_SET = new URL('./conversations.json', import.meta.url).pathname;

export async function loadConversations(file = DEFAULT_SET): Promise<ReplayConversation[]> {
  const parsed = setSchema.safeParse(JSON.parse(await readFile(file, 'utf8')));
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
