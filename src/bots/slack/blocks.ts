import type { types } from '@slack/bolt';
import { ACTION_LABELS, buttonId, type PersistentAction } from '../core/buttons.ts';
import { splitMessage } from '../core/render.ts';

/** Block Kit for the bot's messages: a context line, the text in sections, a row of buttons. */

/** Section blocks hold at most 3000 characters each. */
const SECTION_MAX = 3000;

function buttonsBlock(actions: readonly PersistentAction[], jobId: string): types.ActionsBlock {
  return {
    type: 'actions',
    block_id: 'gill-actions',
    elements: actions.map((action) => ({
      type: 'button' as const,
      text: { type: 'plain_text' as const, text: ACTION_LABELS[action] },
      action_id: buttonId(action, jobId),
      value: jobId,
      ...(action === 'cancel' ? { style: 'danger' as const } : {}),
    })),
  };
}

/** A message part as blocks: an optional header line, the text in sections, the buttons. */
export function partBlocks(
  text: string,
  header: string | undefined,
  actions: readonly PersistentAction[],
  jobId: string,
): types.KnownBlock[] {
  const blocks: types.KnownBlock[] = [];
  if (header) blocks.push({ type: 'context', elements: [{ type: 'mrkdwn', text: header }] });
  for (const section of splitMessage(text, SECTION_MAX)) {
    blocks.push({ type: 'section', text: { type: 'mrkdwn', text: section } });
  }
  if (actions.length) blocks.push(buttonsBlock(actions, jobId));
  return blocks;
}
