-- Deletion is complete (README, "Security and reliability"): every way an image leaves its platform takes
-- it out of the gallery, and soft-deleted images are hard-deleted after the retention period.

-- The platform's id of the file (Discord attachment id, Slack file id), so a file deleted on its own or
-- dropped from a message by an edit is found.
ALTER TABLE images ADD COLUMN attachment_id text;
CREATE INDEX IF NOT EXISTS images_attachment ON images (community_id, attachment_id)
  WHERE attachment_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS images_thread ON images (community_id, thread_id) WHERE thread_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS images_deleted_at ON images (deleted_at) WHERE deleted_at IS NOT NULL;

-- Messages deleted on their platform. An image whose download was still under way when its message was
-- deleted is stored already deleted (src/store/images.ts, add), so no live row outlives the message.
-- channel_id is the channel or thread the deletion named. Swept with the retention period.
CREATE TABLE IF NOT EXISTS deleted_sources (
  community_id bigint NOT NULL REFERENCES communities (id) ON DELETE CASCADE,
  channel_id text NOT NULL,
  message_id text NOT NULL,
  deleted_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (community_id, channel_id, message_id)
);

-- People who asked `forget`: their posted images are not indexed until they opt back in.
CREATE TABLE IF NOT EXISTS index_opt_outs (
  community_id bigint NOT NULL REFERENCES communities (id) ON DELETE CASCADE,
  author_id text NOT NULL,
  opted_out_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (community_id, author_id)
);
