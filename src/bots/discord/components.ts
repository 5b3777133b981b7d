import { ButtonStyle, ComponentType } from 'discord.js';
import { ACTION_LABELS, buttonId, type PersistentAction } from '../core/buttons.ts';

/** Discord message components: the row of buttons under a reply or a progress message. */

export function buttonRow(actions: readonly PersistentAction[], jobId: string): unknown[] {
  if (!actions.length) return [];
  return [
    {
      type: ComponentType.ActionRow,
      components: actions.map((action) => ({
        type: ComponentType.Button,
        style: action === 'cancel' ? ButtonStyle.Danger : ButtonStyle.Secondary,
        label: ACTION_LABELS[action],
        custom_id: buttonId(action, jobId),
      })),
    },
  ];
}
