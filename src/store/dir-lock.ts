import { open, readFile, unlink } from 'node:fs/promises';

/**
 * An exclusive lock on a directory, held by one process through a file holding its pid. PGlite has no
 * locking of its own and two instances on one data directory corrupt it, so a second `gill start` on the
 * same data dir must fail clearly instead. A lock left by a process that died is taken over.
 */
export async function lockDirectory(dir: string): Promise<() => Promise<void>> {
  const file = `${dir}.lock`;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const handle = await open(file, 'wx');
      await handle.writeFile(String(process.pid));
      await handle.close();
      return () => unlink(file).catch(() => {});
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const holder = Number((await readFile(file, 'utf8').catch(() => '')).trim());
    if (holder && isRunning(holder)) {
      const who = holder === process.pid ? 'this process' : `process ${holder}`;
      throw new Error(
        `it is in use by ${who} (lock file ${file}); stop that first, or use Postgres (DATABASE_URL)`,
      );
    }
    await unlink(file).catch(() => {}); // stale: its process is gone
  }
  throw new Error(`could not lock it (lock file ${file})`);
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
