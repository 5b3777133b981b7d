import { randomInt } from 'node:crypto';
import {
  type JobPayload,
  type JobPayloadInput,
  parsePayload,
  type ReplyTarget,
  UserInputError,
} from '../../jobs.ts';
import type { Community, CommunityConfig } from '../../store/types.ts';
import type { RefusalReason, SubmitOutcome } from './bot-core.ts';
import { payloadForButton } from './buttons.ts';
import { buildContext } from './context.ts';
import { anchorFor, contextSeed, conversationOf } from './conversation.ts';
import type { CoreDeps } from './deps.ts';
import { communityBias, learnFromButton } from './feedback.ts';
import { checkLimits } from './limits.ts';
import { authorKey, type InboundTurn } from './turn.ts';

/**
 * A turn that asks for work (chat, imagine, find, a reply's button) becomes a job: its payload built and
 * checked, the community's switches and rate limits applied, the job recorded in the store (its
 * idempotency key makes platform retries land on the same job) and then queued.
 */

/** Refusal keys remembered so a duplicate of a refused event is not answered twice. */
const REMEMBERED_REFUSALS = 5000;

/** Idempotency keys of refused turns (a refusal makes no job, so the store can't tell a retry). */
export class RefusalMemory {
  private readonly keys = new Set<string>();

  has(key: string): boolean {
    return this.keys.has(key);
  }

  remember(key: string): void {
    this.keys.add(key);
    if (this.keys.size > REMEMBERED_REFUSALS) this.keys.delete(this.keys.values().next().value as string);
  }
}

async function payloadFor(
  deps: CoreDeps,
  turn: InboundTurn,
  community: Community,
  config: CommunityConfig,
  notes: string[],
): Promise<JobPayloadInput> {
  const { store, logger } = deps;
  const ref = turn.community;
  const command = turn.command;
  switch (command.kind) {
    case 'chat': {
      const built = await buildContext(await conversationOf(store, community.id, turn), {
        images: deps.images,
        budget: { ...deps.budget, maxMessages: config.contextMessages },
        onRefused: (error, message) =>
          logger.info(
            { reason: error.reason, messageId: message.id, channelId: turn.channelId, community: ref },
            'attachment refused',
          ),
      });
      notes.push(...built.notes);
      return {
        kind: 'chat',
        community: ref,
        context: built.items,
        seed: contextSeed(built.items),
        retrieveBias: (await communityBias(store, community.id, config)).total,
        allowGeneration: config.generationEnabled,
        allowRetrieval: config.retrievalEnabled,
        scope: turn.scope,
      };
    }
    case 'imagine':
      return {
        kind: 'imagine',
        community: ref,
        prompt: command.prompt,
        seed: command.seed,
        steps: command.steps,
      };
    case 'find':
      return { kind: 'find', community: ref, query: command.query, k: command.k, scope: turn.scope };
    case 'button': {
      const original = await store.jobs.get(command.jobId);
      if (!original || original.communityId !== community.id) {
        throw new UserInputError(
          'That reply is no longer known, so its buttons no longer work.',
          'not_found',
        );
      }
      // Retrieval for a button is scoped to where it was pressed, not where the original was asked.
      return payloadForButton(original, command.action, randomInt(2 ** 31 - 1), turn.scope);
    }
    default:
      throw new Error(`not a job command: ${command.kind}`);
  }
}

export function disabledReason(payload: JobPayload, config: CommunityConfig): string | null {
  const wantsGeneration =
    payload.kind === 'imagine' || (payload.kind === 'chat' && payload.imageMode === 'generate');
  const wantsRetrieval =
    payload.kind === 'find' || (payload.kind === 'chat' && payload.imageMode === 'retrieve');
  if (wantsGeneration && !config.generationEnabled)
    return 'Image generation is turned off in this community.';
  if (wantsRetrieval && !config.retrievalEnabled) return 'Image retrieval is turned off in this community.';
  return null;
}

export async function startJob(
  deps: CoreDeps,
  refused: RefusalMemory,
  turn: InboundTurn,
  community: Community,
  config: CommunityConfig,
): Promise<SubmitOutcome> {
  const { store, queue, logger } = deps;
  const log = logger.child({ key: turn.idempotencyKey, platform: turn.platform, user: turn.user.id });
  if (refused.has(turn.idempotencyKey)) {
    return { status: 'duplicate', jobId: null };
  }
  const refuse = (reason: RefusalReason, message: string): SubmitOutcome => {
    refused.remember(turn.idempotencyKey);
    log.info({ reason, message }, 'request refused');
    return { status: 'refused', reason, message };
  };
  const notes: string[] = [];
  let payload: JobPayload;
  try {
    payload = parsePayload(await payloadFor(deps, turn, community, config, notes));
  } catch (error) {
    if (error instanceof UserInputError) {
      return refuse(error.code === 'not_found' ? 'not_found' : 'bad_input', error.message);
    }
    throw error;
  }
  const disabled = disabledReason(payload, config);
  if (disabled) return refuse('disabled', disabled);

  const key = authorKey(turn.platform, turn.user.id);
  const replyTarget: ReplyTarget = {
    ...turn.replyTarget,
    // askedBy names the asker in Cancel answers on platforms without user mentions (the playground).
    data: {
      ...turn.replyTarget.data,
      notes,
      askedBy: turn.user.displayName,
      conversation: await anchorFor(store, turn),
    },
  };
  const { job, created } = await store.jobs.createOrGet({
    idempotencyKey: turn.idempotencyKey,
    communityId: community.id,
    authorKey: key,
    payload,
    replyTarget,
  });
  if (!created) {
    log.info({ jobId: job.id, status: job.status }, 'duplicate event; job already exists');
    // An add that failed the first time (queue down) is retried; one already queued is left as it is.
    if (job.status === 'queued') await queue.add({ id: job.id, payload: job.payload });
    return { status: 'duplicate', jobId: job.id };
  }
  // The new job is already in the store: the caps count the jobs before it. A refused job is cancelled,
  // which keeps a later duplicate of the same event from being answered again.
  const limited = await checkLimits({
    store,
    communityId: community.id,
    authorKey: key,
    config,
    recordedSelf: 1,
    metrics: deps.metrics,
  });
  if (limited) {
    await store.jobs.cancel(job.id);
    return refuse('limited', limited);
  }
  await learnFromButton(store, turn);
  await queue.add({ id: job.id, payload });
  const position = await queue.position(job.id);
  log.info({ jobId: job.id, kind: payload.kind, position }, 'job accepted');
  return { status: 'accepted', jobId: job.id, position };
}
