-- Where each indexed image was posted and who may see it, so that retrieval never shows an image to
-- someone who cannot see its source (src/store/images.ts, ViewerScope). channel_id (from 001) is the
-- channel; thread_id the thread inside it, NULL for a post in the channel itself. A private image is
-- retrievable only in its own channel (visibility 'private', no thread) or its own thread; a public one
-- anywhere in its community. Rows indexed before this migration were searchable everywhere: public.

ALTER TABLE images
  ADD COLUMN thread_id text,
  ADD COLUMN visibility text NOT NULL DEFAULT 'public' CHECK (visibility IN ('public', 'private')),
  -- A private image without a channel could be shown nowhere: refuse it instead of storing it.
  ADD CONSTRAINT images_private_has_channel CHECK (visibility = 'public' OR channel_id IS NOT NULL);

