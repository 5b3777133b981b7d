import type { Row, SqlQuery } from '../../store/sql-client.ts';

/**
 * The playground's channel in the store (migrations/002_playground.sql): posts, threads and bot replies.
 * A bot reply is keyed by its job, so the progress placeholder and the final reply are one message and a
 * retried delivery updates it instead of posting again.
 */

/** An image posted with a message, kept in the store's blobs. */
export interface PostedImage {
  hash: string;
  mime: string;
  width: number;
  height: number;
  name: string;
}

export interface ReplyImage {
  hash: string;
  mime: string;
  width: number;
  height: number;
  kind: 'generated' | 'retrieved';
  score: number;
  /** Generated images: the seed that made them. */
  seed?: number;
  /** Retrieved images: the gallery's name for the image and a link to where it was posted. */
  title?: string | null;
  sourceUrl?: string | null;
}

/** A finished bot reply, in the structure the page shows. */
export interface ReplyContent {
  /** Who asked for it, when the thread doesn't say (button presses). */
  header?: string;
  text: string;
  failed: boolean;
  /** The job was cancelled before it finished: the text says so, and nothing else follows. */
  cancelled?: boolean;
  decision: { choice: 'generate' | 'retrieve'; pGenerate: number; pRetrieve: number } | null;
  images: ReplyImage[];
  notes: string[];
  buttons: { id: string; label: string }[];
}

export interface PlaygroundMessage {
  id: string;
  channelId: string;
  /** The thread's first message; null for a message in the channel itself. */
  threadId: string | null;
  role: 'user' | 'assistant';
  authorId: string;
  authorName: string;
  body: string;
  attachments: PostedImage[];
  jobId: string | null;
  reply: ReplyContent | null;
  createdAt: Date;
  /** Messages in the thread it starts (channel listings only). */
  replyCount?: number;
}

export interface NewMessage
  extends Pick<PlaygroundMessage, 'channelId' | 'threadId' | 'role' | 'authorId' | 'authorName' | 'body'> {
  communityId: string;
  attachments?: PostedImage[];
  /** Names the post: a second post with the same key returns the first. */
  clientKey?: string;
}

export interface BotMessage {
  communityId: string;
  channelId: string;
  threadId: string;
  jobId: string;
  body: string;
}

const ID = /^[1-9]\d{0,18}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const COLUMNS = `id::text AS id, channel_id, thread_id::text AS thread_id, role, author_id, author_name, body,
  attachments, job_id::text AS job_id, reply, created_at`;

interface MessageRow extends Row {
  id: string;
  channel_id: string;
  thread_id: string | null;
  role: 'user' | 'assistant';
  author_id: string;
  author_name: string;
  body: string;
  attachments: PostedImage[];
  job_id: string | null;
  reply: ReplyContent | null;
  created_at: Date;
  reply_count?: number | string;
}

function toMessage(row: MessageRow): PlaygroundMessage {
  return {
    id: row.id,
    channelId: row.channel_id,
    threadId: row.thread_id,
    role: row.role,
    authorId: row.author_id,
    authorName: row.author_name,
    body: row.body,
    attachments: row.attachments,
    jobId: row.job_id,
    reply: row.reply,
    createdAt: new Date(row.created_at),
    ...(row.reply_count !== undefined ? { replyCount: Number(row.reply_count) } : {}),
  };
}

/** Postgres text cannot hold U+0000, which pasted text can contain. */
const clean = (text: string) => text.replaceAll('\0', '');
const json = (value: unknown) =>
  JSON.stringify(value, (_key, v: unknown) => (typeof v === 'string' ? clean(v) : v));

export function isMessageId(id: unknown): id is string {
  return typeof id === 'string' && ID.test(id);
}

export class PlaygroundMessages {
  constructor(private readonly sql: SqlQuery) {}

  async post(input: NewMessage): Promise<{ message: PlaygroundMessage; created: boolean }> {
    const [row] = await this.sql.query<MessageRow>(
      `INSERT INTO playground_messages
         (community_id, channel_id, thread_id, role, author_id, author_name, body, attachments, client_key)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
       ON CONFLICT (client_key) DO NOTHING
       RETURNING ${COLUMNS}`,
      [
        input.communityId,
        input.channelId,
        input.threadId,
        input.role,
        clean(input.authorId),
        clean(input.authorName),
        clean(input.body),
        json(input.attachments ?? []),
        input.clientKey ?? null,
      ],
    );
    if (row) return { message: toMessage(row), created: true };
    const [existing] = await this.sql.query<MessageRow>(
      `SELECT ${COLUMNS} FROM playground_messages WHERE client_key = $1`,
      [input.clientKey],
    );
    if (!existing) throw new Error(`message ${input.clientKey} was neither inserted nor found`);
    return { message: toMessage(existing), created: false };
  }

  /** The bot's progress message for a job; null when the job already has its message (its reply came first). */
  async startReply(input: BotMessage): Promise<PlaygroundMessage | null> {
    const [row] = await this.sql.query<MessageRow>(
      `INSERT INTO playground_messages (community_id, channel_id, thread_id, role, author_id, author_name, body, job_id)
       VALUES ($1, $2, $3, 'assistant', 'gill', 'gill', $4, $5)
       ON CONFLICT (job_id) DO NOTHING
       RETURNING ${COLUMNS}`,
      [input.communityId, input.channelId, input.threadId, clean(input.body), input.jobId],
    );
    return row ? toMessage(row) : null;
  }

  /** Updates the progress line of a job's message while its reply is not in; null when there is none. */
  async progress(jobId: string, body: string): Promise<PlaygroundMessage | null> {
    const [row] = await this.sql.query<MessageRow>(
      `UPDATE playground_messages SET body = $2, updated_at = now()
       WHERE job_id = $1 AND reply IS NULL RETURNING ${COLUMNS}`,
      [jobId, clean(body)],
    );
    return row ? toMessage(row) : null;
  }

  /**
   * Turns a job's progress message into a cancellation notice (a reply with no buttons, so it shows no
   * progress); null when the message is gone or already holds a reply.
   */
  async cancelReply(jobId: string, body: string): Promise<PlaygroundMessage | null> {
    const reply: ReplyContent = {
      text: body,
      failed: false,
      cancelled: true,
      decision: null,
      images: [],
      notes: [],
      buttons: [],
    };
    const [row] = await this.sql.query<MessageRow>(
      `UPDATE playground_messages SET body = $2, reply = $3, updated_at = now()
       WHERE job_id = $1 AND reply IS NULL RETURNING ${COLUMNS}`,
      [jobId, clean(body), json(reply)],
    );
    return row ? toMessage(row) : null;
  }

  /** Writes a job's reply into its message (created if the progress message never was). */
  async finishReply(input: BotMessage & { reply: ReplyContent }): Promise<PlaygroundMessage> {
    const [row] = await this.sql.query<MessageRow>(
      `INSERT INTO playground_messages
         (community_id, channel_id, thread_id, role, author_id, author_name, body, job_id, reply)
       VALUES ($1, $2, $3, 'assistant', 'gill', 'gill', $4, $5, $6)
       ON CONFLICT (job_id) DO UPDATE SET body = excluded.body, reply = excluded.reply, updated_at = now()
       RETURNING ${COLUMNS}`,
      [input.communityId, input.channelId, input.threadId, clean(input.body), input.jobId, json(input.reply)],
    );
    return toMessage(row!);
  }

  async get(id: string): Promise<PlaygroundMessage | null> {
    if (!isMessageId(id)) return null;
    const [row] = await this.sql.query<MessageRow>(
      `SELECT ${COLUMNS} FROM playground_messages WHERE id = $1`,
      [id],
    );
    return row ? toMessage(row) : null;
  }

  async byJob(jobId: string): Promise<PlaygroundMessage | null> {
    if (!UUID.test(jobId)) return null;
    const [row] = await this.sql.query<MessageRow>(
      `SELECT ${COLUMNS} FROM playground_messages WHERE job_id = $1`,
      [jobId],
    );
    return row ? toMessage(row) : null;
  }

  /** The newest messages posted in the channel itself, oldest first, with their thread sizes. */
  async channel(communityId: string, channelId: string, limit: number): Promise<PlaygroundMessage[]> {
    const rows = await this.sql.query<MessageRow>(
      `SELECT ${COLUMNS},
         (SELECT count(*) FROM playground_messages r WHERE r.thread_id = m.id) AS reply_count
       FROM playground_messages m
       WHERE community_id = $1 AND channel_id = $2 AND thread_id IS NULL
       ORDER BY id DESC LIMIT $3`,
      [communityId, channelId, limit],
    );
    return rows.reverse().map(toMessage);
  }

  /** A thread's first message and its newest replies, oldest first. */
  async thread(rootId: string, limit: number): Promise<PlaygroundMessage[]> {
    if (!isMessageId(rootId)) return [];
    const rows = await this.sql.query<MessageRow>(
      `(SELECT ${COLUMNS} FROM playground_messages WHERE id = $1 AND thread_id IS NULL)
       UNION ALL
       (SELECT ${COLUMNS} FROM playground_messages WHERE thread_id = $1 ORDER BY id DESC LIMIT $2)`,
      [rootId, limit],
    );
    return rows.map(toMessage).sort((a, b) => Number(a.id) - Number(b.id));
  }

  /** Whether the bot has answered in the thread (follow-ups there need no mention). */
  async botInThread(rootId: string): Promise<boolean> {
    if (!isMessageId(rootId)) return false;
    const [row] = await this.sql.query<{ found: boolean }>(
      `SELECT EXISTS (SELECT 1 FROM playground_messages WHERE thread_id = $1 AND role = 'assistant') AS found`,
      [rootId],
    );
    return Boolean(row?.found);
  }
}
