-- What a community tells the bot about its retrieve/generate decisions (issue #12 §4): 👍/👎 on a reply
-- that showed an image, and presses of "Retrieve instead" / "Generate instead". Each row pushes the
-- community's learned bias one step towards retrieving (+1) or generating (-1); the store sums the steps
-- with exponential decay by age, and the core bounds the sum (src/store/feedback.ts,
-- src/bots/core/feedback.ts). One row per person, reply and source: a changed reaction replaces the
-- earlier one, a removed reaction deletes it. A reset deletes the community's rows.

CREATE TABLE IF NOT EXISTS decision_feedback (
  community_id bigint NOT NULL REFERENCES communities (id) ON DELETE CASCADE,
  job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  author_key text NOT NULL CHECK (length(author_key) BETWEEN 1 AND 500),
  source text NOT NULL CHECK (source IN ('reaction', 'button')),
  direction smallint NOT NULL CHECK (direction IN (-1, 1)),
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (job_id, author_key, source)
);

CREATE INDEX IF NOT EXISTS decision_feedback_by_community ON decision_feedback (community_id, created_at);

-- A reaction names a message, not a job: Slack replies remember their message ids in
-- reply_target.data.messageTs (src/bots/slack/outbound.ts), and this index finds the job from one.
CREATE INDEX IF NOT EXISTS jobs_by_reply_message
  ON jobs USING gin ((reply_target -> 'data' -> 'messageTs') jsonb_path_ops)
  WHERE kind = 'chat';
