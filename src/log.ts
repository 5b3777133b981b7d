import pino, { type Logger } from 'pino';

export type { Logger };

/**
 * Structured JSON logs. Tokens and secrets are redacted wherever they appear under a known key, so a
 * config object, a request or an error can be logged whole.
 */
const REDACT = [
  'token',
  '*.token',
  '*.*.token',
  'interactionToken',
  '*.interactionToken',
  '*.*.interactionToken',
  'authorization',
  '*.authorization',
  '*.headers.authorization',
  'DISCORD_TOKEN',
  'SLACK_BOT_TOKEN',
  'SLACK_SIGNING_SECRET',
  'SLACK_APP_TOKEN',
  '*.DISCORD_TOKEN',
  '*.SLACK_BOT_TOKEN',
  '*.SLACK_SIGNING_SECRET',
  '*.SLACK_APP_TOKEN',
];

export function createLogger(
  level = process.env.GILL_LOG_LEVEL ?? 'info',
  destination?: pino.DestinationStream,
): Logger {
  return pino({ level, redact: { paths: REDACT, censor: '[redacted]' }, base: { app: 'gill' } }, destination);
}
