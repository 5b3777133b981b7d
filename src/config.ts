import path from 'node:path';
import { z } from 'zod';

/**
 * Configuration comes from environment variables only. Every value is validated at start; a bad value
 * produces one line naming the variable, and the CLI exits with code 2 (see ConfigError).
 */

const url = (protocols: string[]) =>
  z
    .string()
    .trim()
    .refine(
      (value) => {
        try {
          return protocols.includes(new URL(value).protocol);
        } catch {
          return false;
        }
      },
      `must be a URL starting with ${protocols.map((p) => `${p}//`).join(' or ')}`,
    );

const port = z.coerce
  .number({ message: 'must be a port number' })
  .int('must be a whole number')
  .min(1, 'must be between 1 and 65535')
  .max(65535, 'must be between 1 and 65535');

const nonEmpty = z.string().trim().min(1, 'must not be empty');

/** GILL_RETENTION_DAYS unless set. */
export const DEFAULT_RETENTION_DAYS = 30;

const envSchema = z.object({
  DATABASE_URL: url(['postgres:', 'postgresql:']).optional(),
  REDIS_URL: url(['redis:', 'rediss:']).optional(),
  GILL_DATA_DIR: nonEmpty.default('.gill'),
  GILL_MODEL: nonEmpty.default('models/gill-tiny'),
  GILL_PORT: port.default(7860),
  GILL_HOST: nonEmpty.default('127.0.0.1'),
  /** Required by the playground on a GILL_HOST other than loopback; then every request must carry it. */
  GILL_PLAYGROUND_TOKEN: z.string().trim().min(16, 'must be at least 16 characters').optional(),
  GILL_LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  GILL_THREADS: z.coerce.number().int().min(1, 'must be at least 1').max(256).optional(),
  GILL_EXECUTION_PROVIDER: z.enum(['cpu', 'cuda']).default('cpu'),
  /** /metrics, /healthz, /readyz: a port, or `off`; unset, each role's default (src/roles/observe.ts). */
  GILL_METRICS_PORT: z.union([z.literal('off'), port]).optional(),
  /** How long a worker's lock on its job lasts unrenewed: a killed worker's job moves on after about this. */
  GILL_JOB_LOCK_MS: z.coerce.number().int().min(1000, 'must be at least 1000').default(60_000),
  /** Days a deleted image (and its bytes) is kept before the retention sweep removes it. */
  GILL_RETENTION_DAYS: z.coerce
    .number()
    .min(0, 'must be at least 0')
    .max(3650)
    .default(DEFAULT_RETENTION_DAYS),
  /** Indexing's own lane (src/bots/core/limits.ts): unfinished index jobs per community, images per person per minute. */
  GILL_INDEX_MAX_PENDING: z.coerce
    .number()
    .int('must be a whole number')
    .min(1, 'must be at least 1')
    .default(500),
  GILL_INDEX_PER_USER_PER_MINUTE: z.coerce
    .number()
    .int('must be a whole number')
    .min(1, 'must be at least 1')
    .default(20),
  DISCORD_TOKEN: nonEmpty.optional(),
  DISCORD_APPLICATION_ID: z
    .string()
    .trim()
    .regex(/^\d{15,21}$/, 'must be a Discord snowflake (15 to 21 digits)')
    .optional(),
  DISCORD_API_URL: url(['http:', 'https:']).optional(),
  DISCORD_CDN_URL: url(['http:', 'https:']).optional(),
  DISCORD_MESSAGE_CONTENT: z
    .enum(['true', 'false'])
    .default('true')
    .transform((v) => v === 'true'),
  SLACK_BOT_TOKEN: z
    .string()
    .trim()
    .regex(/^xoxb-/, 'must be a bot token starting with xoxb-')
    .optional(),
  SLACK_SIGNING_SECRET: nonEmpty.optional(),
  SLACK_APP_TOKEN: z
    .string()
    .trim()
    .regex(/^xapp-/, 'must be an app-level token starting with xapp-')
    .optional(),
  SLACK_API_URL: url(['http:', 'https:']).optional(),
  SLACK_PORT: port.default(3000),
  SLACK_ADMIN_USERS: z
    .string()
    .default('')
    .transform((v) =>
      v
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
    ),
});

export type Env = z.infer<typeof envSchema>;

export interface Config extends Env {
  /** Absolute data directory: embedded database, stored blobs. */
  dataDir: string;
  /** Absolute path of the model bundle folder. */
  modelDir: string;
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
    this.name = 'ConfigError';
  }
}

/** Variables whose values must never reach a log line. */
export const SECRET_KEYS = [
  'GILL_PLAYGROUND_TOKEN',
  'DISCORD_TOKEN',
  'SLACK_BOT_TOKEN',
  'SLACK_SIGNING_SECRET',
  'SLACK_APP_TOKEN',
] as const;

export function loadConfig(env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): Config {
  // Empty strings count as unset: `FOO= gill start` is how people clear a value.
  const cleaned = Object.fromEntries(
    Object.keys(envSchema.shape).flatMap((key) => {
      const value = env[key];
      return value === undefined || value === '' ? [] : [[key, value]];
    }),
  );
  const parsed = envSchema.safeParse(cleaned);
  if (!parsed.success) {
    throw new ConfigError(
      parsed.error.issues.map((issue) => {
        const key = String(issue.path[0] ?? 'environment');
        return `${key}: ${issue.message}`;
      }),
    );
  }
  const problems: string[] = [];
  const e = parsed.data;
  if (e.SLACK_BOT_TOKEN && !e.SLACK_SIGNING_SECRET && !e.SLACK_APP_TOKEN) {
    problems.push(
      'SLACK_SIGNING_SECRET: required with SLACK_BOT_TOKEN unless SLACK_APP_TOKEN (Socket Mode) is set',
    );
  }
  if (e.DISCORD_TOKEN && !e.DISCORD_APPLICATION_ID) {
    problems.push('DISCORD_APPLICATION_ID: required with DISCORD_TOKEN');
  }
  if (problems.length) throw new ConfigError(problems);
  return {
    ...e,
    dataDir: path.resolve(cwd, e.GILL_DATA_DIR),
    modelDir: path.resolve(cwd, e.GILL_MODEL),
  };
}
