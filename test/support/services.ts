import { randomBytes } from 'node:crypto';
import net from 'node:net';
import pg from 'pg';

/**
 * Real services for tests. Outside CI a missing service skips its suites loudly; with CI=true a missing
 * service fails the run, so nothing is skipped silently.
 *
 *   const pgUp = await serviceAvailable('Postgres', probePostgres);
 *   describe.skipIf(!pgUp)('store on Postgres', ...)
 */

export const IN_CI = process.env.CI === 'true';
export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

/** Runs the probe; on failure throws under CI, else prints what is skipped and returns false. */
export async function serviceAvailable(name: string, probe: () => Promise<unknown>): Promise<boolean> {
  try {
    await probe();
    return true;
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    if (IN_CI) throw new Error(`${name} is required when CI=true but is unavailable: ${reason}`);
    console.warn(`\n*** SKIPPING tests that need ${name}: ${reason} ***\n`);
    return false;
  }
}

export async function probePostgres(url = TEST_DATABASE_URL): Promise<void> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3000 });
  try {
    await client.connect();
    await client.query('SELECT 1');
  } finally {
    await client.end().catch(() => {});
  }
}

/** Sends PING over a raw socket, so the probe needs no Redis client. */
export function probeRedis(url = TEST_REDIS_URL): Promise<void> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: hostname, port: Number(port || 6379), timeout: 3000 });
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.once('data', (data) => {
      socket.destroy();
      data.toString().startsWith('+PONG') ? resolve() : reject(new Error(`unexpected reply ${data}`));
    });
    socket.once('timeout', () => {
      socket.destroy();
      reject(new Error(`no answer from ${hostname}:${port} within 3 s`));
    });
    socket.once('error', reject);
  });
}

/** A new empty database next to the test database, so concurrent runs never share tables. */
export async function createTempDatabase(prefix: string): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `${prefix}_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`.toLowerCase();
  const admin = async (sql: string) => {
    const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  };
  await admin(`CREATE DATABASE ${name}`);
  const url = new URL(TEST_DATABASE_URL);
  url.pathname = `/${name}`;
  return { url: url.toString(), drop: () => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}
