// @ts-check
// Talking to the playground's server (src/bots/playground/server.ts): JSON requests, and the shapes of what
// it sends (messages as src/bots/playground/messages.ts stores them, progress as outbound.ts publishes it).

/** Every request that changes something carries it; the server refuses those without (no cross-site forms). */
export const HEADER = { 'x-gill-playground': '1' };

/**
 * @typedef {{ id: string, name: string }} User
 * @typedef {{ hash: string, name: string }} Attachment
 * @typedef {{ choice: 'generate' | 'retrieve', pGenerate: number, pRetrieve: number }} Decision
 * @typedef {{ hash: string, kind: 'generated' | 'retrieved', score: number, seed?: number,
 *   title?: string | null, sourceUrl?: string | null }} ResultImage
 * @typedef {{ header?: string, text: string, failed: boolean, cancelled?: boolean,
 *   decision: Decision | null, images: ResultImage[], notes: string[],
 *   buttons: { id: string, label: string }[] }} Reply
 * @typedef {{ id: string, channelId: string, threadId: string | null, role: 'user' | 'assistant',
 *   authorId: string, authorName: string, body: string, attachments: Attachment[], jobId: string | null,
 *   reply: Reply | null, createdAt: string, replyCount?: number }} Message
 * @typedef {{ jobId: string, threadId: string | null, text: string, stage: string, step?: number,
 *   steps?: number, preview?: string }} ProgressEvent
 * @typedef {{ maxBytes: number, maxPixels: number, maxFiles: number, maxChars: number }} Limits
 * @typedef {{ message: Message, threadId: string, answering: boolean, notice?: string }} PostResult
 */

/**
 * A JSON request; a refusal comes back as an Error with the server's sentence.
 * @param {string} path
 * @param {RequestInit} [init]
 * @returns {Promise<any>}
 */
export async function api(path, init = {}) {
  const response = await fetch(path, init);
  /** @type {{ error?: string }} */
  let body = {};
  try {
    body = await response.json();
  } catch {
    // Not JSON: the status says enough.
  }
  if (!response.ok) throw new Error(body.error || `The server answered ${response.status}.`);
  return body;
}

export function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Who this browser is: an id made once and kept, and the name the person typed.
 * @returns {User}
 */
export function loadUser() {
  try {
    const saved = JSON.parse(localStorage.getItem('gill.user') ?? 'null');
    if (saved && /^[\w-]{1,64}$/.test(saved.id)) return saved;
  } catch {
    // A damaged entry is replaced below.
  }
  const user = { id: randomId(), name: 'you' };
  localStorage.setItem('gill.user', JSON.stringify(user));
  return user;
}

/** @param {User} user */
export function saveUser(user) {
  localStorage.setItem('gill.user', JSON.stringify(user));
}

/** @param {unknown} error */
export function errorText(error) {
  return error instanceof Error ? error.message : String(error);
}
