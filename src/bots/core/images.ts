import type { Store } from '../../store/types.ts';
import { type FetchGuard, FetchRefusedError, formatBytes } from './fetch-guard.ts';
import type { Attachment } from './turn.ts';

/**
 * Turns platform attachments into stored images: checked through the fetch guard, which hands back the
 * image re-encoded without EXIF or other metadata, and kept in the store's blobs by content hash
 * (platform CDN links expire; the stored bytes are canonical, and are what the bots re-post). Results are cached
 * by attachment, so a thread's images are downloaded once, not at every turn.
 */

export interface StoredImage {
  hash: string;
  mime: string;
  width: number;
  height: number;
}

export interface ImageIngest {
  /** Stores the attachment's image; throws FetchRefusedError (a message for the poster) when it is refused. */
  ingest(attachment: Attachment): Promise<StoredImage>;
}

/** Whether an attachment claims to be an image (by type, else by file name); other files are not fetched. */
export function looksLikeImage(attachment: Attachment): boolean {
  if (attachment.contentType) return attachment.contentType.toLowerCase().startsWith('image/');
  return /\.(png|jpe?g|webp|gif)$/i.test(attachment.name);
}

export function createImageIngest(deps: {
  store: Store;
  guard: FetchGuard;
  cacheSize?: number;
}): ImageIngest {
  const cacheSize = deps.cacheSize ?? 2000;
  const cache = new Map<string, StoredImage>();

  return {
    async ingest(attachment) {
      const key = attachment.id ?? attachment.url;
      const hit = cache.get(key);
      if (hit) {
        // Map order is insertion order: re-insert to keep recently used entries.
        cache.delete(key);
        cache.set(key, hit);
        return hit;
      }
      const label = `"${attachment.name}"`;
      if (!looksLikeImage(attachment)) {
        throw new FetchRefusedError(`${label} is not an image (PNG, JPEG, WebP or GIF)`, 'not_image');
      }
      if (attachment.size !== undefined && attachment.size > deps.guard.maxBytes) {
        throw new FetchRefusedError(
          `${label} is ${formatBytes(attachment.size)}; images up to ${formatBytes(deps.guard.maxBytes)} are read`,
          'too_large',
        );
      }
      const image = await deps.guard.fetchImage(attachment.url, attachment.name);
      const hash = await deps.store.blobs.put(image.bytes, image.mime);
      const stored = { hash, mime: image.mime, width: image.width, height: image.height };
      cache.set(key, stored);
      if (cache.size > cacheSize) cache.delete(cache.keys().next().value as string);
      return stored;
    },
  };
}
