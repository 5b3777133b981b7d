import type { Config } from '../config.ts';
import { describeDatabase, migrationError, openDatabase } from './connect.ts';
import { loadMigrations, migrate } from './migrations.ts';

/** `gill migrate`: applies pending migrations and prints what it applied. */
export async function runMigrate(config: Config, out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const where = describeDatabase(config);
  const migrations = await loadMigrations();
  const client = await openDatabase(config);
  try {
    const applied = await migrate(client, migrations).catch((error) => {
      throw migrationError(config, error);
    });
    for (const m of applied) out.write(`applied ${m.version}_${m.name}\n`);
    out.write(
      applied.length
        ? `${where}: ${applied.length} migration(s) applied, schema at ${migrations.at(-1)?.version}\n`
        : `${where}: schema up to date (${migrations.length} migration(s))\n`,
    );
  } finally {
    await client.close();
  }
}
