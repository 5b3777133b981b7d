import { ConfigError } from '../src/config.ts';
import { runCluster } from '../src/roles/cluster.ts';

// `npm run cluster -- --workers N`: see src/roles/cluster.ts and README, "Scaling".
try {
  await runCluster(process.argv.slice(2));
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  process.stderr.write(`${error.message}\n`);
  process.exitCode = 2;
}
