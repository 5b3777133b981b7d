import pino, { type Logger } from 'pino';

export type { Logger };

/**
 * Structured JSON logs that never carry secrets or file bytes, so a config object, a request or an error
 * can be logged whole (README, "Security"):
 * - errors are serialized without the request body a REST client attached to them (discord.js's
 *   DiscordAPIError and HTTPError keep `requestBody.files`, the uploaded images), and binary data anywhere
 *   is logged as its length only;
 * - the finished line is scrubbed of secrets wherever they appear: strings under secret-named keys
 *   (token, authorization, *_TOKEN, *_SECRET) at any depth, Slack `xox…`/`xapp-…` tokens,
 *   Discord bot tokens, the interaction or webhook token in a `/webhooks/<id>/<token>` or
 *   `/interactions/<id>/<token>` URL (DiscordAPIError's `url`) or rate-limit bucket, `Bot …`/`Bearer …` credentials and
 *   passwords in URLs.
 */

const CENSOR = '[redacted]';
/** Error fields that hold what was sent, not what went wrong. */
const REQUEST_FIELDS = new Set(['requestBody', 'requestData']);
const MAX_DEPTH = 10;

const SECRET_PATTERNS: [RegExp, string][] = [
  // A string under a secret-named key, at any depth and in child loggers' bindings too.
  [
    /"(token|interactionToken|authorization|cookie|password|\w*_(?:TOKEN|SECRET))":"(?:[^"\\]|\\.)*"/gi,
    `"$1":"${CENSOR}"`,
  ],
  [/\bxox[a-z]{0,2}(?:[.-][A-Za-z0-9]+)+/g, CENSOR],
  [/\bxapp-[A-Za-z0-9-]+/g, CENSOR],
  // Discord bot token: base64 user id, timestamp, HMAC.
  [/(?<![\w-])[\w-]{23,28}\.[\w-]{6,7}\.[\w-]{27,}/g, CENSOR],
  [/(\/(?:webhooks|interactions)\/\d+\/)[\w.~%-]+/g, `$1${CENSOR}`],
  // discord.js's rate-limit data names a webhook's bucket by "<id>/<token>".
  [/("majorParameter":"\d+\/)[^"]*/g, `$1${CENSOR}`],
  [/\b(Bot|Bearer) [\w.~+/=-]{16,}/g, `$1 ${CENSOR}`],
  [/(\/\/[^/\s:@"]+:)[^/\s@"]+@/g, `$1${CENSOR}@`],
];

/** Replaces every token pattern in a string. */
export function redactSecrets(text: string): string {
  let out = text;
  for (const [pattern, replacement] of SECRET_PATTERNS) out = out.replace(pattern, replacement);
  return out;
}

function isPlainish(value: object): boolean {
  // Objects JSON shows by their own toJSON (Date, URL) are left to it; their strings are scrubbed as text.
  return typeof (value as { toJSON?: unknown }).toJSON !== 'function';
}

/** A copy of a logged value with errors serialized, without the requests they carry, and without bytes. */
function scrub(value: unknown, depth: number, seen: WeakSet<object>): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return `[${value.byteLength} bytes]`;
  if (typeof Blob !== 'undefined' && value instanceof Blob) return `[${value.size} bytes]`;
  if (seen.has(value)) return '[circular]';
  if (depth >= MAX_DEPTH) return '[nested too deep]';
  seen.add(value);
  try {
    if (value instanceof Error) return scrub(pino.stdSerializers.err(value), depth, seen);
    if (Array.isArray(value)) return value.map((item) => scrub(item, depth + 1, seen));
    if (!isPlainish(value)) return value;
    const out: Record<string, unknown> = {};
    for (const [key, field] of Object.entries(value)) {
      if (REQUEST_FIELDS.has(key)) continue;
      out[key] = scrub(field, depth + 1, seen);
    }
    return out;
  } finally {
    seen.delete(value);
  }
}

function scrubObject<T extends object>(object: T): T {
  return scrub(object, 0, new WeakSet()) as T;
}

export function createLogger(
  level = process.env.GILL_LOG_LEVEL ?? 'info',
  destination?: pino.DestinationStream,
): Logger {
  return pino(
    {
      level,
      base: { app: 'gill' },
      formatters: { log: scrubObject },
      // formatters.log has serialized every error already (pino would take `rawError` for a nested error).
      serializers: { err: (value: unknown) => value },
      hooks: { streamWrite: redactSecrets },
    },
    destination,
  );
}
