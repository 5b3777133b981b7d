import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { type Config, loadConfig } from '../../src/config.ts';
import { connect } from '../../src/store/index.ts';
import type { Store } from '../../src/store/types.ts';
import { createTempDatabase, IN_CI, probePostgres } from './services.ts';

/**
 * A fresh store for engine tests: a temporary Postgres database when Postgres runs here (quick to
 * create), otherwise the embedded PGlite in a temporary folder (the same store, slower to start).
 * Under CI Postgres must be there.
 */
export async function openEngineStore(
  modelDir: string,
): Promise<{ store: Store; config: Config; close(): Promise<void> }> {
  const postgresUp = await probePostgres().then(
    () => true,
    (error: unknown) => {
      if (IN_CI) throw error;
      return false;
    },
  );
  const dataDir = await mkdtemp(path.join(tmpdir(), 'gill-engine-data-'));
  const database = postgresUp ? await createTempDatabase('engine_test') : undefined;
  const config = loadConfig({
    GILL_MODEL: modelDir,
    GILL_DATA_DIR: dataDir,
    GILL_THREADS: '2',
    ...(database ? { DATABASE_URL: database.url } : {}),
  });
  const store = await connect(config);
  return {
    store,
    config,
    close: async () => {
      await store.close();
      await database?.drop();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
