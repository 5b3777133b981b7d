import { createHash } from 'node:crypto';
import type { ContextItem } from '../../jobs.ts';
import type { JobRecord, Store } from '../../store/types.ts';
import type { InboundTurn, ThreadMessage } from './turn.ts';

/**
 * What the model reads of a conversation, the same on every platform and whatever the timing: people's
 * messages as the platform gives them, and the bot's own turns as the store recorded them — the text the
 * model answered and the images it produced (GILL conditions on its earlier outputs, docs/gill-method.md §3) —
 * each right after the message it answered. The bot's rendered messages are never read back: they carry
 * progress lines, decision lines, captions, notes and buttons, and whether they are posted or edited yet
 * depends on timing.
 */

/** Where a chat job sits in its conversation; recorded in its reply target's data as `conversation`. */
export interface ConversationAnchor {
  /** The conversation: `<channel id>/<thread id>`. */
  thread: string;
  /** The id of the message the job answers (for a button's job, the one its original answered). */
  answers: string;
}

/** Answers read per turn; a thread holds more than the context keeps only with many button presses. */
const ANSWERS_READ = 500;

/** The anchor a turn's job gets: a chat turn in a thread answers its last message. */
export function anchorOfTurn(turn: InboundTurn): ConversationAnchor | null {
  const answered = turn.messages.at(-1);
  if (turn.command.kind !== 'chat' || !turn.threadId || !answered) return null;
  return { thread: `${turn.channelId}/${turn.threadId}`, answers: answered.id };
}

/** The anchor of the job a turn starts: a button's job answers what its original answered. */
export async function anchorFor(store: Store, turn: InboundTurn): Promise<ConversationAnchor | null> {
  if (turn.command.kind !== 'button') return anchorOfTurn(turn);
  const original = await store.jobs.get(turn.command.jobId);
  return original ? anchorOfJob(original) : null;
}

export function anchorOfJob(job: JobRecord): ConversationAnchor | null {
  const anchor = job.replyTarget.data.conversation as Partial<ConversationAnchor> | undefined;
  return typeof anchor?.thread === 'string' && typeof anchor.answers === 'string'
    ? { thread: anchor.thread, answers: anchor.answers }
    : null;
}

/**
 * The turn's conversation for the model: the platform's messages without the bot's own, each followed
 * by the bot's latest finished answer to it (a button's job answers the same message as its original,
 * and the newest answer is the one people last saw).
 */
export async function conversationOf(
  store: Store,
  communityId: string,
  turn: InboundTurn,
): Promise<ThreadMessage[]> {
  const people = turn.messages.filter((m) => m.role === 'user');
  const anchor = anchorOfTurn(turn);
  if (!anchor) return people;
  const latest = new Map<string, JobRecord>();
  for (const job of await store.jobs.listConversationAnswers(communityId, anchor.thread, ANSWERS_READ)) {
    const answers = anchorOfJob(job)?.answers;
    if (answers) latest.set(answers, job);
  }
  return people.flatMap((message) => {
    const answer = message === people.at(-1) ? undefined : latest.get(message.id);
    return answer ? [message, botTurn(answer)] : [message];
  });
}

function botTurn(job: JobRecord): ThreadMessage {
  return {
    id: `job:${job.id}`,
    role: 'assistant',
    authorId: 'gill',
    authorName: 'gill',
    text: job.result?.text ?? '',
    attachments: [],
    storedImages: job.result?.images.map((image) => image.hash) ?? [],
  };
}

/**
 * The diffusion seed of a chat turn, from its context: the same conversation gets the same image on every
 * platform and run (with greedy decoding, the same reply), and Regenerate picks a new seed.
 */
export function contextSeed(items: ContextItem[]): number {
  return createHash('sha256').update(JSON.stringify(items)).digest().readUInt32BE(0) & 0x7fffffff;
}
