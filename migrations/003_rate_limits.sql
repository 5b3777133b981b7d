-- The per-user request rate limit (CommunityConfig.userJobsPerMinute), counted in the store so that it
-- holds across bot processes and restarts. One row per user and community: the times of the requests
-- accepted within the window, as a sliding log updated by one INSERT … ON CONFLICT … DO UPDATE
-- (src/store/store.ts, rateLimits.take). Times are epoch milliseconds. Rows whose every time has left the
-- window are deleted by later calls.

CREATE TABLE IF NOT EXISTS rate_limits (
  community_id bigint NOT NULL REFERENCES communities (id) ON DELETE CASCADE,
  author_key text NOT NULL CHECK (length(author_key) BETWEEN 1 AND 500),
  -- Accepted requests still inside the window, oldest first.
  accepted_at bigint[] NOT NULL,
  -- The latest request (accepted or not), and whether it was accepted: what the statement returns.
  last_request_at bigint NOT NULL,
  last_allowed boolean NOT NULL,
  -- When the newest accepted request leaves the window: from then on the row counts nothing.
  expires_at bigint NOT NULL,
  PRIMARY KEY (community_id, author_key)
);

CREATE INDEX IF NOT EXISTS rate_limits_expiry ON rate_limits (expires_at);
