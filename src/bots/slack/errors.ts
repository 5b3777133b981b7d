/**
 * Slack Web API errors the bot can't fix by retrying, explained for the person who asked or an admin.
 */

/** Errors after which retrying cannot help: the bot is not (or no longer) allowed to post there. */
export const UNDELIVERABLE = new Set([
  'not_in_channel',
  'channel_not_found',
  'is_archived',
  'restricted_action',
  'restricted_action_read_only_channel',
  'restricted_action_thread_only_channel',
  'missing_scope',
  'account_inactive',
  'invalid_auth',
  'team_access_not_granted',
]);

export function slackErrorCode(error: unknown): string | undefined {
  const e = error as { code?: string; data?: { error?: string } };
  return e?.code === 'slack_webapi_platform_error' ? e.data?.error : undefined;
}

/** A sentence for the user or admin about a Slack error the bot can't fix by itself. */
export function explainSlackError(code: string): string {
  switch (code) {
    case 'not_in_channel':
    case 'channel_not_found':
      return 'I can’t post in this channel. Invite me first with `/invite @gill` (private channels need it too).';
    case 'is_archived':
      return 'This channel is archived, so I can’t post in it.';
    case 'missing_scope':
      return 'The Slack app is missing a permission (scope); a workspace admin should reinstall it from its manifest.';
    default:
      return `Slack refused my message (${code}).`;
  }
}

/** Errors of posting in a channel that mean nobody there could ever see the bot's answer. */
const CANNOT_POST = new Set(['not_in_channel', 'channel_not_found', 'is_archived']);

/** The error code and the sentence for the asker when the bot can't post in the channel at all; null otherwise. */
export function cannotPostThere(error: unknown): { code: string; message: string } | null {
  const code = slackErrorCode(error);
  return code && CANNOT_POST.has(code) ? { code, message: explainSlackError(code) } : null;
}
