import pg from 'pg';
import { createLogger } from '../../src/log.ts';
import { BullJobQueue } from '../../src/queue/bullmq.ts';
import { startDelivery } from '../../src/queue/delivery.ts';
import { MemoryJobQueue } from '../../src/queue/memory.ts';
import type { JobQueue } from '../../src/queue/queue.ts';
import { recoverUnfinished } from '../../src/queue/recover.ts';
import { serveJobs } from '../../src/roles/worker.ts';
import { connect } from '../../src/store/index.ts';
import { FakeEngine, scriptOf } from './fake-engine.ts';

/**
 * A worker or bot in its own process, for the queue tests that kill processes:
 *   node --import tsx test/support/queue-child.ts worker|bot
 * Settings come from the environment (CHILD_QUEUE, REDIS_URL, QUEUE_PREFIX, DATABASE_URL, GRACE_MS, OWNER);
 * it reports on stdout, one JSON object a line.
 */

const report = (message: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(message)}\n`);
const env = (name: string) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const role = process.argv[2];
const logger = createLogger(process.env.CHILD_LOG_LEVEL ?? 'warn');
const store = await connect({ DATABASE_URL: env('DATABASE_URL'), dataDir: '.' });
const queue: JobQueue =
  env('CHILD_QUEUE') === 'memory'
    ? new MemoryJobQueue({ backoffMs: 50 })
    : new BullJobQueue({
        redisUrl: env('REDIS_URL'),
        prefix: env('QUEUE_PREFIX'),
        backoffMs: 50,
        lockDurationMs: 2000,
        stalledIntervalMs: 1000,
      });
if (queue instanceof BullJobQueue) await queue.ready();

if (role === 'worker') {
  const fake = new FakeEngine();
  const engine = {
    run: (...args: Parameters<FakeEngine['run']>) => {
      report({ started: scriptOf(args[0]).tag });
      return fake.run(...args);
    },
    close: () => fake.close(),
  };
  // The embedded process's start: what the store holds unfinished goes back into its fresh queue.
  if (queue.kind === 'memory') await recoverUnfinished(store, queue);
  report({ ready: 'worker' });
  await serveJobs({ queue, store, engine, logger, shutdownGraceMs: Number(process.env.GRACE_MS ?? 5000) });
  await queue.close();
  await store.close();
  report({ stopped: 'worker', runs: fake.runs.length });
} else if (role === 'bot') {
  const owner = env('OWNER');
  const db = new pg.Client({ connectionString: env('DATABASE_URL') });
  await db.connect();
  startDelivery({
    store,
    queue,
    platform: 'cli',
    owner,
    sweepIntervalMs: 200,
    leaseMs: 2000,
    logger,
    async deliver(job) {
      await db.query('INSERT INTO queue_test_deliveries (job_id, owner) VALUES ($1, $2)', [job.id, owner]);
      return { owner };
    },
  });
  report({ ready: 'bot' });
} else {
  throw new Error(`unknown role ${role}`);
}
