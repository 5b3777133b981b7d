import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from '../config.ts';
import type { Logger } from '../log.ts';
import { migrate } from './migrations.ts';
import { pgliteClient, postgresClient, type SqlClient } from './sql-client.ts';
import { createStore } from './store.ts';
import type { Store } from './types.ts';
import { SEARCH_SESSION_SETTINGS } from './vector-search.ts';

/**
 * Opening the store: Postgres when DATABASE_URL is set, else the embedded PGlite under the data dir.
 * Migrations run at every connect. Errors name the database (host, port, database, user; never the
 * password) and say whether retrying can help.
 */

export type StoreConfig = Pick<Config, 'DATABASE_URL' | 'dataDir'>;

/** Idle Postgres connections a process keeps (PostgresClientOptions.min): searches run on warm backends. */
const KEPT_CONNECTIONS = 2;

export class StoreConnectionError extends Error {
  constructor(
    message: string,
    /** True when the database may come up later (refused, timed out, starting); false for bad settings. */
    readonly retryable: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'StoreConnectionError';
  }
}

/** Where the data lives, for messages: never includes a password. */
export function describeDatabase(config: StoreConfig): string {
  if (!config.DATABASE_URL) return `embedded PGlite at ${pgliteDir(config)}`;
  try {
    const url = new URL(config.DATABASE_URL);
    const user = url.username ? ` as ${decodeURIComponent(url.username)}` : '';
    return `Postgres at ${url.hostname}:${url.port || 5432}${url.pathname || '/'}${user}`;
  } catch {
    return 'Postgres (DATABASE_URL is not a valid URL)';
  }
}

export function pgliteDir(config: StoreConfig): string {
  return path.join(config.dataDir, 'pglite');
}

// Codes worth waiting for: the server is down, starting, unreachable or full.
const RETRYABLE = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  '57P03', // cannot_connect_now: starting up or shutting down
  '53300', // too_many_connections
]);

/** Node reports a refused dual-stack connect as an AggregateError with an empty message. */
function reason(error: unknown): { code?: string; text: string } {
  const inner = error instanceof AggregateError && error.errors.length ? error.errors[0] : error;
  const e = inner as { code?: string; message?: string };
  const text = e?.message || String(inner);
  return { code: e?.code, text };
}

function connectionError(config: StoreConfig, error: unknown): StoreConnectionError {
  const { code, text } = reason(error);
  const where = describeDatabase(config);
  const timedOut = /timeout/i.test(text);
  let hint = '';
  if (code === '3D000') hint = ' (create the database, or fix the name in DATABASE_URL)';
  else if (code === '28P01' || code === '28000') hint = ' (check the user and password in DATABASE_URL)';
  return new StoreConnectionError(
    `cannot connect to ${where}: ${text}${hint}`,
    RETRYABLE.has(code ?? '') || timedOut || /terminated/i.test(text),
    { cause: error },
  );
}

async function openPostgres(
  config: StoreConfig & { DATABASE_URL: string },
  logger?: Logger,
): Promise<SqlClient> {
  const client = postgresClient(config.DATABASE_URL, {
    sessionSettings: SEARCH_SESSION_SETTINGS,
    min: KEPT_CONNECTIONS,
    onIdleError: (error) => logger?.warn({ err: reason(error).text }, 'idle database connection failed'),
  });
  try {
    await client.query('SELECT 1');
    return client;
  } catch (error) {
    await client.close().catch(() => {});
    throw connectionError(config, error);
  }
}

/**
 * Opens the database without migrating it (`gill migrate` reports what it applies).
 * The embedded database must not be opened by two processes at once: one `gill start` per data dir.
 */
export async function openDatabase(config: StoreConfig, logger?: Logger): Promise<SqlClient> {
  if (config.DATABASE_URL) return openPostgres({ ...config, DATABASE_URL: config.DATABASE_URL }, logger);
  try {
    return await pgliteClient(pgliteDir(config), { sessionSettings: SEARCH_SESSION_SETTINGS });
  } catch (error) {
    throw new StoreConnectionError(`cannot open ${describeDatabase(config)}: ${reason(error).text}`, false, {
      cause: error,
    });
  }
}

/** Makes a migration failure say which database it was and, for a missing pgvector, what to install. */
export function migrationError(config: StoreConfig, error: unknown): Error {
  const { text } = reason(error);
  const where = describeDatabase(config);
  if (/extension "vector"|vector\.control/.test(text)) {
    return new Error(
      `${where} lacks the pgvector extension (${text}); install pgvector 0.8 or newer on the server ` +
        '(Debian: .ci/install-pgvector.sh)',
      { cause: error },
    );
  }
  return new Error(`migrating ${where} failed: ${text}`, { cause: error });
}

export async function connect(config: StoreConfig, options: { logger?: Logger } = {}): Promise<Store> {
  const client = await openDatabase(config, options.logger);
  try {
    const applied = await migrate(client);
    if (applied.length) {
      options.logger?.info(
        { database: describeDatabase(config), migrations: applied.map((m) => `${m.version}_${m.name}`) },
        'applied database migrations',
      );
    }
  } catch (error) {
    await client.close().catch(() => {});
    throw migrationError(config, error);
  }
  return createStore(client);
}

/**
 * connect() for long-running roles: while the database is unreachable, logs and retries with
 * exponential backoff (1 s doubling to 30 s) until it answers or the signal aborts. Errors that waiting
 * cannot fix (bad password, missing database or pgvector) are thrown at once.
 */
export async function connectWithRetry(
  config: StoreConfig,
  logger: Logger,
  options: { signal?: AbortSignal; initialDelayMs?: number; maxDelayMs?: number } = {},
): Promise<Store> {
  let delay = options.initialDelayMs ?? 1000;
  const maxDelay = options.maxDelayMs ?? 30_000;
  for (let attempt = 1; ; attempt++) {
    try {
      return await connect(config, { logger });
    } catch (error) {
      if (!(error instanceof StoreConnectionError && error.retryable)) throw error;
      logger.warn({ attempt, retryInMs: delay, err: error.message }, 'database unreachable; retrying');
      await sleep(delay, undefined, { signal: options.signal });
      delay = Math.min(delay * 2, maxDelay);
    }
  }
}
