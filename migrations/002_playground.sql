-- The local playground's channel (src/bots/playground): its messages and threads, kept in the store so a
-- restart keeps the conversation. Bot replies are tied to their job, one message per job, so delivery
-- retries and restarts never post a reply twice.

CREATE TABLE IF NOT EXISTS playground_messages (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  community_id bigint NOT NULL REFERENCES communities (id) ON DELETE CASCADE,
  channel_id text NOT NULL,
  -- The first message of the thread; NULL for a message posted in the channel itself.
  thread_id bigint REFERENCES playground_messages (id) ON DELETE CASCADE,
  role text NOT NULL CHECK (role IN ('user', 'assistant')),
  author_id text NOT NULL,
  author_name text NOT NULL,
  body text NOT NULL DEFAULT '',
  -- Posted images, by blob hash: [{ "hash", "mime", "width", "height", "name" }].
  attachments jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(attachments) = 'array'),
  -- Names a post so that a resent request does not post it twice.
  client_key text UNIQUE,
  -- The job a bot message answers: its progress, then its reply.
  job_id uuid UNIQUE REFERENCES jobs (id) ON DELETE SET NULL,
  -- A finished bot reply: images with their provenance, the decision, notes, buttons. NULL while in progress.
  reply jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS playground_channel_messages
  ON playground_messages (community_id, channel_id, id) WHERE thread_id IS NULL;
CREATE INDEX IF NOT EXISTS playground_thread_messages ON playground_messages (thread_id, id);
