import { randomBytes } from 'node:crypto';
import type { ImageIngest } from '../core/images.ts';
import type { Attachment } from '../core/turn.ts';
import type { PostedImage } from './messages.ts';

/**
 * Uploaded files go through the bots' own image ingest: each is put up briefly at a URL of this server
 * (the platform's "file host"), and the core's fetch guard downloads, checks and stores it exactly as it
 * does a Discord or Slack attachment, with the same byte and pixel limits and the same messages.
 */

export interface UploadedFile {
  name: string;
  /** The type the browser gave; the bytes decide in the end. */
  type: string;
  bytes: Uint8Array;
}

export const UPLOADS_PATH = '/uploads/';
export const BLOBS_PATH = '/blobs/';

export class UploadShelf {
  private readonly shelf = new Map<string, UploadedFile>();
  private origin = '';
  private images?: ImageIngest;

  /** Set once the server listens: its own origin, and the ingest whose fetch guard allows only that origin. */
  open(origin: string, images: ImageIngest): void {
    this.origin = origin;
    this.images = images;
  }

  /** A file being checked, for the guard's download; undefined once it is done. */
  take(token: string): UploadedFile | undefined {
    return this.shelf.get(token);
  }

  /** Checks and stores one upload; throws FetchRefusedError with a message for the person who sent it. */
  async ingest(file: UploadedFile): Promise<PostedImage> {
    if (!this.images) throw new Error('the playground is still starting');
    const token = randomBytes(16).toString('hex');
    this.shelf.set(token, file);
    try {
      const stored = await this.images.ingest({
        id: `upload:${token}`,
        url: `${this.origin}${UPLOADS_PATH}${token}`,
        name: file.name,
        size: file.bytes.byteLength,
        ...(file.type ? { contentType: file.type } : {}),
      });
      return { ...stored, name: file.name };
    } finally {
      this.shelf.delete(token);
    }
  }

  /** A stored image as an attachment the core can read again (thread context, indexing). */
  attachment(image: { hash: string; mime: string; name: string }): Attachment {
    return {
      id: `blob:${image.hash}`,
      url: `${this.origin}${BLOBS_PATH}${image.hash}`,
      name: image.name,
      contentType: image.mime,
    };
  }
}
