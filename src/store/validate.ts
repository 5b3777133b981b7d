/**
 * Checks of the values the store is handed. Ids are bigint identities (communities, images) or uuids
 * (jobs, which users can name in buttons, so they must not be guessable), always handled as strings.
 * A lookup by a malformed id finds nothing (the is… tests); a write with one is a programming error and
 * throws (the require… checks).
 */

const ROW_ID = /^[1-9]\d{0,18}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const SHA256 = /^[0-9a-f]{64}$/;
const MIME = /^[\w.+-]+\/[\w.+-]+$/;

/** A bigint identity: a community or image id. */
export const isRowId = (id: unknown): id is string => typeof id === 'string' && ROW_ID.test(id);
export const isJobId = (id: unknown): id is string => typeof id === 'string' && UUID.test(id);
export const isSha256 = (hash: unknown): hash is string => typeof hash === 'string' && SHA256.test(hash);

function invalidId(id: string, what: string): RangeError {
  return new RangeError(`${what} must be a valid id, got "${id}"`);
}

export function requireRowId(id: string, what: string): string {
  if (!isRowId(id)) throw invalidId(id, what);
  return id;
}

export function requireJobId(id: string): string {
  if (!isJobId(id)) throw invalidId(id, 'job id');
  return id;
}

export function requireMime(mime: string): string {
  if (typeof mime !== 'string' || mime.length > 100 || !MIME.test(mime)) {
    throw new RangeError(`mime must be a media type such as image/png, got "${mime}"`);
  }
  return mime;
}

export function requireLimit(limit: number): number {
  if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) {
    throw new RangeError(`limit must be a whole number from 1 to 10000, got ${limit}`);
  }
  return limit;
}
