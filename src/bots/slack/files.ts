import {
  type AllowedOrigin,
  createFetchGuard,
  type FetchGuard,
  FetchRefusedError,
} from '../core/fetch-guard.ts';

/** Reading files people post in Slack: only from Slack's file host, with the bot token. */

const SLACK_FILES_ORIGIN = 'https://files.slack.com';

/** The fetch guard for Slack files; a configured API URL (a proxy, or the fake Slack in tests) serves them too. */
export function slackFileGuard(token: string, apiUrl: string | undefined): FetchGuard {
  const headers = { Authorization: `Bearer ${token}` };
  const allowed: AllowedOrigin[] = [{ origin: SLACK_FILES_ORIGIN, headers }];
  if (apiUrl) allowed.push({ origin: new URL(apiUrl).origin, headers });
  return withSignInExplained(createFetchGuard({ allowed }));
}

/** Slack's sign-in page instead of a file means the token lacks files:read or the file isn't shared with the bot. */
function withSignInExplained(guard: FetchGuard): FetchGuard {
  return {
    maxBytes: guard.maxBytes,
    allows: (url) => guard.allows(url),
    async fetchImage(url, name) {
      try {
        return await guard.fetchImage(url, name);
      } catch (error) {
        if (
          error instanceof FetchRefusedError &&
          error.reason === 'not_image' &&
          /web page/.test(error.message)
        ) {
          throw new FetchRefusedError(
            `"${name ?? 'The file'}" could not be read: Slack answered with its sign-in page, so the app lacks the files:read permission or can't see that file`,
            'not_image',
          );
        }
        throw error;
      }
    },
  };
}
