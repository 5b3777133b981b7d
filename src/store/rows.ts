/**
 * Mapping between table rows and the store's records. Each record type is read by one select list that
 * names every field once, aliased to the record's own field names, so a row comes back as the record.
 * Values written pass through the text helpers, since Postgres text and jsonb cannot hold U+0000, which
 * chat messages can contain: it is dropped.
 */
import type { Row } from './sql-client.ts';
import type { ImageRecord, JobRecord } from './types.ts';

/** `expression AS "field"` for every field of T; the type makes a missing or unknown field an error. */
function selectList<T>(columns: { [K in keyof T]-?: string }): string {
  return Object.entries(columns)
    .map(([field, expression]) => `${expression} AS "${field}"`)
    .join(', ');
}

export const IMAGE_COLUMNS = selectList<ImageRecord>({
  id: 'id::text',
  communityId: 'community_id::text',
  hash: 'hash',
  mime: 'mime',
  width: 'width',
  height: 'height',
  channelId: 'channel_id',
  messageId: 'message_id',
  authorId: 'author_id',
  permalink: 'permalink',
  title: 'title',
  threadId: 'thread_id',
  visibility: 'visibility',
  hasEmbedding: 'embedding IS NOT NULL',
  live: 'deleted_at IS NULL',
  createdAt: 'created_at',
});

export const JOB_COLUMNS = selectList<JobRecord>({
  id: 'id::text',
  idempotencyKey: 'idempotency_key',
  communityId: 'community_id::text',
  authorKey: 'author_key',
  kind: 'kind',
  payload: 'payload',
  replyTarget: 'reply_target',
  status: 'status',
  result: 'result',
  error: 'error',
  attempts: 'attempts',
  createdAt: 'created_at',
  updatedAt: 'updated_at',
  deliveredAt: 'delivered_at',
});

const withoutNul = (text: string) => text.replaceAll('\0', '');

/** A value for a jsonb column (bound as text and cast). */
export const json = (value: unknown) =>
  JSON.stringify(value, (_key, v: unknown) => (typeof v === 'string' ? withoutNul(v) : v));

export const optionalText = (text: string | null | undefined) => (text == null ? null : withoutNul(text));

/** A foreign key violation: the row it names (a community, a blob) does not exist. */
export function foreignKeyViolation(error: unknown): { constraint?: string } | null {
  const e = error as { code?: string; constraint?: string } | null;
  return e?.code === '23503' ? e : null;
}

/** Rows as the select lists above return them. */
export type ImageRow = ImageRecord & Row;
export type JobRow = JobRecord & Row;
