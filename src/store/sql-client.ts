import { randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { PGlite } from '@electric-sql/pglite';
import { vector } from '@electric-sql/pglite-pgvector';
import pg from 'pg';
import { lockDirectory } from './dir-lock.ts';

/**
 * The one seam between the store and its database: Postgres through a `pg` pool, or the embedded PGlite.
 * All store SQL runs through this, so both databases run the same statements.
 */

export type Row = Record<string, unknown>;

export interface SqlQuery {
  /** One statement with $n parameters; returns its rows (use RETURNING to learn what changed). */
  query<T extends Row = Row>(text: string, params?: unknown[]): Promise<T[]>;
  /** Several statements, no parameters (migrations). */
  exec(sql: string): Promise<void>;
}

export interface SqlClient extends SqlQuery {
  readonly kind: 'postgres' | 'pglite';
  /** Settings every one of this client's sessions starts with (SET at connect); see ClientOptions. */
  readonly sessionSettings: Readonly<Record<string, string>>;
  /** Runs fn in one transaction on one connection; commits when it resolves, rolls back when it throws. */
  transaction<T>(fn: (tx: SqlQuery) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

export interface ClientOptions {
  /**
   * Settings (`SET name = value`) made once per connection rather than per statement, so that a statement
   * that needs them runs alone: the vector search's (src/store/vector-search.ts) save it four round trips.
   * Names are dotted identifiers and values plain words or numbers; anything else is refused.
   */
  sessionSettings?: Record<string, string>;
}

export interface PostgresClientOptions extends ClientOptions {
  max?: number;
  /**
   * Connections kept open while idle (the others close after 10 s idle). A kept backend has already
   * mapped the shared buffers a search reads (about 1,750 pages of graph at a million images); a new one
   * pays a page fault for each on its first searches, and its connection set-up (README, "Scaling").
   */
  min?: number;
  connectionTimeoutMillis?: number;
  /** Errors of idle pooled connections (a server restart); without a listener they would crash the process. */
  onIdleError?: (error: Error) => void;
}

/** The SET statements for `settings`, checked: they are interpolated into SQL. */
function setStatements(settings: Record<string, string>): string {
  return Object.entries(settings)
    .map(([name, value]) => {
      if (!/^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$/.test(name))
        throw new RangeError(`bad setting name "${name}"`);
      if (!/^[A-Za-z0-9_.-]{1,64}$/.test(value))
        throw new RangeError(`bad value "${value}" for setting ${name}`);
      return `SET ${name} = '${value}'`;
    })
    .join('; ');
}

export function postgresClient(url: string, options: PostgresClientOptions = {}): SqlClient {
  // Names this pool's sessions, so that close() can find its own index builds among the server's sessions.
  const applicationName = `gill-${randomUUID()}`;
  const sessionSettings = { ...options.sessionSettings };
  const settings = setStatements(sessionSettings);
  const pool = new pg.Pool({
    connectionString: url,
    application_name: applicationName,
    max: options.max ?? 10,
    min: options.min ?? 0,
    connectionTimeoutMillis: options.connectionTimeoutMillis ?? 10_000,
    // Run before the pool hands the connection out; a failure ends it and fails that checkout.
    onConnect: settings ? async (client) => void (await client.query(settings)) : undefined,
  });
  pool.on('error', (error) => options.onIdleError?.(error));
  return {
    kind: 'postgres',
    sessionSettings,
    async query<T extends Row>(text: string, params?: unknown[]) {
      return (await pool.query(text, params)).rows as T[];
    },
    async exec(sql) {
      await pool.query(sql);
    },
    async transaction(fn) {
      const client = await pool.connect();
      try {
        await client.query('BEGIN');
        const result = await fn({
          query: async <T extends Row>(text: string, params?: unknown[]) =>
            (await client.query(text, params)).rows as T[],
          exec: async (sql: string) => {
            await client.query(sql);
          },
        });
        await client.query('COMMIT');
        return result;
      } catch (error) {
        await client.query('ROLLBACK').catch(() => {});
        throw error;
      } finally {
        client.release();
      }
    },
    async close() {
      // A community's own index (CREATE INDEX CONCURRENTLY) can take minutes to build, and pool.end() waits
      // for every statement. Cancelled, the build leaves an invalid index, which the next
      // ensureCommunityIndex drops and builds again. Only asked when a statement is in flight, so closing
      // an idle pool (or one whose server is down) does not open a connection.
      if (pool.totalCount > pool.idleCount) {
        await pool
          .query(
            `SELECT pg_cancel_backend(pid) FROM pg_stat_activity
             WHERE application_name = $1 AND pid <> pg_backend_pid() AND query ILIKE 'CREATE INDEX CONCURRENTLY%'`,
            [applicationName],
          )
          .catch(() => {});
      }
      await pool.end();
    },
  };
}

/** PGlite with pgvector; `dataDir` undefined keeps the database in memory. */
export async function pgliteClient(dataDir?: string, options: ClientOptions = {}): Promise<SqlClient> {
  const sessionSettings = { ...options.sessionSettings };
  const settings = setStatements(sessionSettings);
  let unlock = async () => {};
  if (dataDir) {
    await mkdir(dataDir, { recursive: true });
    unlock = await lockDirectory(dataDir);
  }
  let db: PGlite | undefined;
  try {
    db = await PGlite.create({ dataDir, extensions: { vector } });
    if (settings) await db.exec(settings);
  } catch (error) {
    await db?.close().catch(() => {});
    await unlock();
    throw error;
  }
  const open = db;
  return {
    kind: 'pglite',
    sessionSettings,
    async query<T extends Row>(text: string, params?: unknown[]) {
      return (await open.query<T>(text, params)).rows;
    },
    async exec(sql) {
      await open.exec(sql);
    },
    transaction: (fn) =>
      open.transaction((tx) =>
        fn({
          query: async <T extends Row>(text: string, params?: unknown[]) =>
            (await tx.query<T>(text, params)).rows,
          exec: async (sql: string) => {
            await tx.exec(sql);
          },
        }),
      ),
    async close() {
      try {
        await open.close();
      } finally {
        await unlock();
      }
    },
  };
}
