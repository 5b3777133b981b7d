/**
 * The one MIME type → file extension map for images the project writes out (reply attachments, `gill
 * imagine` files). Which types are accepted on the way in is the fetch guard's business (its magic bytes).
 */
const EXTENSIONS: Readonly<Record<string, string>> = {
  'image/png': 'png',
  'image/jpeg': 'jpg',
  'image/webp': 'webp',
  'image/gif': 'gif',
};

/** The extension (without the dot) for an image MIME type; undefined for a type not listed. */
export function imageExtension(mime: string): string | undefined {
  return EXTENSIONS[mime];
}
