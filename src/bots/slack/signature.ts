import type { HTTPReceiver } from '@slack/bolt';

/**
 * Slack's request signing guide: refuse a request whose X-Slack-Request-Timestamp is more than five
 * minutes from now, so a captured request can't be replayed. Bolt's check (verify-request) refuses only
 * the stale side; a request dated in the future, signed by whoever could sign it once, would stay
 * replayable until that date. This refuses it before Bolt sees it, with the same 401 as a bad signature.
 */

export const MAX_REQUEST_AGE_S = 5 * 60;

export function refuseFutureDatedRequests(receiver: HTTPReceiver, now: () => number = Date.now): void {
  const checked = receiver.requestListener;
  receiver.requestListener = (req, res) => {
    const timestamp = Number(req.headers['x-slack-request-timestamp']);
    if (Number.isFinite(timestamp) && timestamp > now() / 1000 + MAX_REQUEST_AGE_S) {
      res.writeHead(401, { 'content-type': 'text/plain' });
      res.end('request timestamp is in the future');
      return;
    }
    checked(req, res);
  };
}
