-- Initial schema: communities and their settings, content-addressed blobs, indexed images, jobs with
-- their delivery claims. Migrations are forward-only; each runs once, in a transaction, recorded in
-- schema_migrations by the runner (src/store/migrations.ts).

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE IF NOT EXISTS communities (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  platform text NOT NULL CHECK (platform IN ('discord', 'slack', 'playground', 'cli')),
  -- Discord guild id, Slack team id, or a local name.
  external_id text NOT NULL CHECK (length(external_id) BETWEEN 1 AND 100),
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (platform, external_id)
);

-- Only the settings an admin changed are stored; defaults live in code (DEFAULT_COMMUNITY_CONFIG), so a
-- changed default reaches every community that never overrode it.
CREATE TABLE IF NOT EXISTS community_config (
  community_id bigint PRIMARY KEY REFERENCES communities (id) ON DELETE CASCADE,
  settings jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS blobs (
  hash text PRIMARY KEY CHECK (hash ~ '^[0-9a-f]{64}$'),
  bytes bytea NOT NULL,
  mime text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- The embedding column has no fixed dimension so that any model bundle's retrieval dimension fits.
-- HNSW needs a fixed dimension, so the store creates one partial expression index per dimension in use
-- (src/store/vector-index.ts):
--   USING hnsw ((embedding::vector(D)) vector_ip_ops) WHERE vector_dims(embedding) = D AND deleted_at IS NULL
-- and searches with the same expression and predicate. Embeddings are normalised on write, so the inner
-- product is the cosine similarity; soft-deleted rows leave the index.
CREATE TABLE IF NOT EXISTS images (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  community_id bigint NOT NULL REFERENCES communities (id) ON DELETE CASCADE,
  hash text NOT NULL REFERENCES blobs (hash),
  mime text NOT NULL,
  width integer NOT NULL CHECK (width > 0),
  height integer NOT NULL CHECK (height > 0),
  channel_id text,
  message_id text,
  author_id text,
  permalink text,
  title text,
  embedding vector,
  created_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz,
  -- One row per image per message (Slack message ids are unique only within a channel). Local imports
  -- have no channel or message: NULLS NOT DISTINCT keeps re-imports from duplicating them.
  CONSTRAINT images_source_key UNIQUE NULLS NOT DISTINCT (community_id, hash, channel_id, message_id)
);

-- Exact search when a community is small, and counts.
CREATE INDEX IF NOT EXISTS images_community_live ON images (community_id) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS images_by_message ON images (community_id, channel_id, message_id);
CREATE INDEX IF NOT EXISTS images_by_author ON images (community_id, author_id);

CREATE TABLE IF NOT EXISTS jobs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  idempotency_key text NOT NULL UNIQUE,
  community_id bigint REFERENCES communities (id) ON DELETE SET NULL,
  -- Who asked (platform user id, scoped by the adapter), for per-user concurrency caps.
  author_key text,
  kind text NOT NULL CHECK (kind IN ('chat', 'imagine', 'find', 'index')),
  payload jsonb NOT NULL,
  reply_target jsonb NOT NULL,
  platform text NOT NULL GENERATED ALWAYS AS (reply_target ->> 'platform') STORED,
  status text NOT NULL DEFAULT 'queued'
    CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
  result jsonb,
  error jsonb,
  attempts integer NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  -- Delivery: a deliverer holds a claim until it expires; only the holder may mark the job delivered.
  delivery_owner text,
  delivery_claim_expires_at timestamptz,
  delivered_at timestamptz,
  delivery_receipt jsonb
);

CREATE INDEX IF NOT EXISTS jobs_undelivered ON jobs (platform, created_at)
  WHERE delivered_at IS NULL AND status IN ('completed', 'failed');
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (created_at) WHERE status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_active_by_author ON jobs (community_id, author_key)
  WHERE status IN ('queued', 'running');
