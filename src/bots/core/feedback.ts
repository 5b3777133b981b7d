import type { CommunityConfig, FeedbackSource, JobRecord, Store } from '../../store/types.ts';
import type { ReactionRequest } from './bot-core.ts';
import type { CoreDeps } from './deps.ts';
import { authorKey, type InboundTurn } from './turn.ts';

/**
 * The community teaches the decision (beyond the paper; issue #12 §4): 👍/👎 on a reply that showed an
 * image, and "Retrieve instead" / "Generate instead", each push the community's retrieve/generate bias
 * one step. The steps decay with age and their sum is bounded, so a burst of votes cannot pin the decision
 * and old taste fades; the admin's `/gill bias` is added on top, and `/gill feedback reset` forgets it all.
 * The bias is added to the decision head's retrieve logit (docs/gill-method.md §3 step 6), as `/gill bias` is.
 */

/**
 * Logit added per event (before the bound): three agreeing events outweigh a 90/10 decision (2.2 logits),
 * six a 99/1 one (4.6), nine a 99.8/0.2 one (6.2). The tiny bundle's decision head gives scenes it
 * generates up to 99.75% ("draw a big red circle": 6.0 logits), so a smaller step or bound would leave
 * the community's taste no say on them.
 */
export const FEEDBACK_STEP = 1;
/** The learned bias stays within ±FEEDBACK_MAX logits (the admin's bias can go to ±10). */
export const FEEDBACK_MAX = 8;
/** An event counts half after this long. */
export const FEEDBACK_HALF_LIFE_MS = 14 * 24 * 3600_000;

/** 👍 / 👎 as the adapters read them from the platforms' emoji. */
export type Reaction = 'up' | 'down';

/**
 * 👍/👎 from an emoji as the platforms name it: Discord's Unicode emoji (skin tones and variation
 * selectors included), Slack's short names (`+1`, `thumbsup`, `-1`, `thumbsdown`, with `::skin-tone-N`).
 */
export function reactionOfEmoji(name: string): Reaction | null {
  const base = name.replace(/::skin-tone-\d$/, '').replace(/[\u{1F3FB}-\u{1F3FF}\u{FE0F}]/gu, '');
  if (base === '👍' || base === '+1' || base === 'thumbsup') return 'up';
  if (base === '👎' || base === '-1' || base === 'thumbsdown') return 'down';
  return null;
}

/** A sum of decayed steps as a bias: linear near zero, bounded by ±FEEDBACK_MAX. */
export function boundedBias(weighted: number): number {
  return FEEDBACK_MAX * Math.tanh((FEEDBACK_STEP * weighted) / FEEDBACK_MAX);
}

/**
 * Which way a reaction or button on a reply pushes (+1 towards retrieving, -1 towards generating); null
 * when the reply made no decision (no image, or not a chat turn), so there is nothing to learn from it.
 */
export function directionOf(job: JobRecord, signal: Reaction | 'retrieve' | 'generate'): 1 | -1 | null {
  const choice = job.kind === 'chat' ? job.result?.decision?.choice : undefined;
  if (!choice) return null;
  if (signal === 'retrieve') return choice === 'generate' ? 1 : null;
  if (signal === 'generate') return choice === 'retrieve' ? -1 : null;
  const towardsChoice = choice === 'retrieve' ? 1 : -1;
  return signal === 'up' ? towardsChoice : towardsChoice === 1 ? -1 : 1;
}

export interface CommunityBias {
  /** The admin's `/gill bias`. */
  admin: number;
  /** Learned from feedback, within ±FEEDBACK_MAX. */
  learned: number;
  /** Feedback events on record (each decaying). */
  events: number;
  /** What the decision gets: admin + learned, within the payload's ±10. */
  total: number;
}

export async function communityBias(
  store: Store,
  communityId: string,
  config: CommunityConfig,
): Promise<CommunityBias> {
  const { weighted, events } = await store.feedback.sum(communityId, FEEDBACK_HALF_LIFE_MS);
  const learned = boundedBias(weighted);
  const total = Math.max(-10, Math.min(10, config.retrieveBias + learned));
  return { admin: config.retrieveBias, learned, events, total };
}

/** Records a signal on a reply, when it says something about the decision; returns whether it did. */
export async function recordFeedback(
  store: Store,
  input: {
    job: JobRecord;
    authorKey: string;
    source: FeedbackSource;
    signal: Reaction | 'retrieve' | 'generate';
  },
): Promise<boolean> {
  const { job } = input;
  const direction = directionOf(job, input.signal);
  if (direction === null || !job.communityId) return false;
  await store.feedback.record({
    communityId: job.communityId,
    jobId: job.id,
    authorKey: input.authorKey,
    source: input.source,
    direction,
  });
  return true;
}

/** A reaction on a reply, from the adapters: recorded, or taken back when removed. */
export async function reactToReply(deps: CoreDeps, request: ReactionRequest): Promise<boolean> {
  const { store, logger } = deps;
  const community = await store.communities.ensure(request.community);
  const { reply } = request;
  const job =
    'jobId' in reply
      ? await store.jobs.get(reply.jobId)
      : await store.jobs.findChatByReplyMessage(community.id, reply.messageId);
  if (!job || job.communityId !== community.id) return false;
  const key = authorKey(request.community.platform, request.userId);
  if (!request.added) {
    const direction = directionOf(job, request.reaction);
    return (
      direction !== null &&
      store.feedback.withdraw({ jobId: job.id, authorKey: key, source: 'reaction', direction })
    );
  }
  const taken = await recordFeedback(store, {
    job,
    authorKey: key,
    source: 'reaction',
    signal: request.reaction,
  });
  if (taken)
    logger.info({ community: request.community, jobId: job.id, reaction: request.reaction }, 'feedback');
  return taken;
}

/** "Retrieve instead" / "Generate instead" on a chat reply says which the person wanted. */
export async function learnFromButton(store: Store, turn: InboundTurn): Promise<void> {
  const command = turn.command;
  if (command.kind !== 'button' || (command.action !== 'retrieve' && command.action !== 'generate')) return;
  const original = await store.jobs.get(command.jobId);
  if (!original) return;
  await recordFeedback(store, {
    job: original,
    authorKey: authorKey(turn.platform, turn.user.id),
    source: 'button',
    signal: command.action,
  });
}

/** One line for `/gill show`. */
export function describeFeedback(bias: CommunityBias): string {
  if (bias.events === 0)
    return 'Learned from feedback: nothing yet (👍/👎 on replies with images and “Retrieve/Generate instead” teach it).';
  const towards = bias.learned >= 0 ? 'retrieving' : 'generating';
  return `Learned from feedback: ${bias.learned >= 0 ? '+' : ''}${bias.learned.toFixed(2)} towards ${towards}, from ${bias.events} reaction${bias.events === 1 ? '' : 's'} and button press${bias.events === 1 ? '' : 'es'} (each counts half after ${FEEDBACK_HALF_LIFE_MS / 86_400_000} days; at most ±${FEEDBACK_MAX}). The decision gets ${bias.total >= 0 ? '+' : ''}${bias.total.toFixed(2)} in all. \`/gill feedback reset\` forgets it.`;
}
