-- The bot's own turns of a conversation are read from its finished chat jobs, not from the messages it
-- rendered (src/bots/core/conversation.ts): each chat job records in reply_target.data.conversation the
-- thread it belongs to and the message it answers. This index finds a thread's answers.

CREATE INDEX IF NOT EXISTS jobs_by_conversation
  ON jobs (community_id, (reply_target -> 'data' -> 'conversation' ->> 'thread'), created_at)
  WHERE kind = 'chat' AND status = 'completed';
