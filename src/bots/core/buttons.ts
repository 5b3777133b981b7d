import { type JobPayload, type JobPayloadInput, UserInputError } from '../../jobs.ts';
import type { JobRecord, ViewerScope } from '../../store/types.ts';
import type { ButtonAction } from './turn.ts';

/**
 * The buttons under a reply, and the Cancel button on a progress message. Their ids carry everything
 * needed to act on them (`gill:<action>:<jobId>`, the job's payload is in the store), so they keep working
 * after a restart and on any bot process.
 */

export const BUTTON_LABELS: Record<ButtonAction, string> = {
  regenerate: 'Regenerate',
  retrieve: 'Retrieve instead',
  generate: 'Generate instead',
  more: 'More like this',
};

/** Every persistent button: the reply buttons, and Cancel on a job's progress message while it is unfinished. */
export type PersistentAction = ButtonAction | 'cancel';

export const ACTION_LABELS: Record<PersistentAction, string> = { ...BUTTON_LABELS, cancel: 'Cancel' };

/** The buttons on a progress message. */
export const PROGRESS_BUTTONS: readonly PersistentAction[] = ['cancel'];

const ACTIONS = Object.keys(ACTION_LABELS) as PersistentAction[];
const PREFIX = 'gill';

/** The custom id of a button (at most 100 characters, as Discord and Slack allow). */
export function buttonId(action: PersistentAction, jobId: string): string {
  const id = `${PREFIX}:${action}:${jobId}`;
  if (id.length > 100) throw new Error(`button id over 100 characters for job ${jobId}`);
  return id;
}

/** Reads a custom id written by buttonId; null for ids that are not ours. */
export function parseButtonId(customId: string): { action: PersistentAction; jobId: string } | null {
  const [prefix, action, jobId, ...rest] = customId.split(':');
  if (prefix !== PREFIX || !jobId || rest.length || !ACTIONS.includes(action as PersistentAction))
    return null;
  return { action: action as PersistentAction, jobId };
}

/** Which buttons make sense under this finished job's reply (never Cancel: the job is done). */
export function buttonsFor(job: JobRecord): ButtonAction[] {
  if (job.status === 'failed') return job.error?.userFacing ? [] : ['regenerate'];
  if (job.status !== 'completed') return [];
  switch (job.payload.kind) {
    case 'imagine':
      return ['regenerate', 'retrieve'];
    case 'find':
      return ['more', 'generate'];
    case 'chat': {
      const choice = job.result?.decision?.choice;
      if (choice === 'generate') return ['regenerate', 'retrieve'];
      if (choice === 'retrieve') return ['more', 'generate'];
      return ['regenerate'];
    }
    default:
      return [];
  }
}

function shownImageIds(job: JobRecord): string[] {
  return (job.result?.images ?? []).flatMap((image) => (image.source ? [image.source.imageId] : []));
}

/**
 * The payload of the new job a button asks for, derived from the original job. Its retrieval is scoped to
 * where the button was pressed (`scope`; absent: public images only), whatever the original said.
 */
export function payloadForButton(
  original: JobRecord,
  action: ButtonAction,
  seed: number,
  scope?: ViewerScope,
): JobPayloadInput {
  const derived = derivedPayload(original, action, seed);
  return derived.kind === 'chat' || derived.kind === 'find' ? { ...derived, scope } : derived;
}

function derivedPayload(original: JobRecord, action: ButtonAction, seed: number): JobPayloadInput {
  const payload: JobPayload = original.payload;
  switch (payload.kind) {
    case 'chat':
      switch (action) {
        case 'regenerate':
          return { ...payload, seed };
        case 'retrieve':
          return { ...payload, imageMode: 'retrieve', seed };
        case 'generate':
          return { ...payload, imageMode: 'generate', seed };
        case 'more':
          return {
            ...payload,
            imageMode: 'retrieve',
            excludeImageIds: [...payload.excludeImageIds, ...shownImageIds(original)].slice(-1000),
          };
      }
      break;
    case 'imagine':
      if (action === 'regenerate' || action === 'generate') return { ...payload, seed };
      if (action === 'retrieve' || action === 'more') {
        return { kind: 'find', community: payload.community, query: payload.prompt, k: 4 };
      }
      break;
    case 'find':
      if (action === 'generate' || action === 'regenerate') {
        return { kind: 'imagine', community: payload.community, prompt: payload.query, seed };
      }
      return {
        ...payload,
        excludeImageIds: [...payload.excludeImageIds, ...shownImageIds(original)].slice(-1000),
      };
    case 'index':
      break;
  }
  throw new UserInputError('This button does not apply to that reply');
}
