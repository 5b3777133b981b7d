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
  /** Runs fn in one transaction on one connection; commits when it resolves, rolls back when it throws. */
  transaction<T>(fn: (tx: SqlQuery) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

export interface PostgresClientOptions {
  max?: number;
  connectionTimeoutMillis?: number;
  /** Errors of idle pooled connections (a server restart); without a listener they would crash the process. */
  onIdleError?: (error: Error) => void;
}

export function postgresClient(url: string, options: PostgresClientOptions = {}): SqlClient {
  // Names this pool's sessions, so that close() can find its own index builds among the server's sessions.
  const applicationName = `gill-${randomUUID()}`;
  const pool = new pg.Pool({
    connectionString: url,
    application_name: applicationName,
    max: options.max ?? 10,
    connectionTimeoutMillis: options.connectionTimeoutMillis ?? 10_000,
  });
  pool.on('error', (error) => options.onIdleError?.(error));
  return {
    kind: 'postgres',
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
export async function pgliteClient(dataDir?: string): Promise<SqlClient> {
  let unlock = async () => {};
  if (dataDir) {
    await mkdir(dataDir, { recursive: true });
    unlock = await lockDirectory(dataDir);
  }
  let db: PGlite;
  try {
    db = await PGlite.create({ dataDir, extensions: { vector } });
  } catch (error) {
    await unlock();
    throw error;
  }
  return {
    kind: 'pglite',
    async query<T extends Row>(text: string, params?: unknown[]) {
      return (await db.query<T>(text, params)).rows;
    },
    async exec(sql) {
      await db.exec(sql);
    },
    transaction: (fn) =>
      db.transaction((tx) =>
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
        await db.close();
      } finally {
        await unlock();
      }
    },
  };
}
