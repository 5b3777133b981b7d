import { type Config, ConfigError } from '../config.ts';
import type { Logger } from '../log.ts';
import { createMetrics, type GillMetrics } from '../metrics/metrics.ts';
import { type MetricsServer, type ReadinessCheck, startMetricsServer } from '../metrics/server.ts';
import type { JobQueue } from '../queue/queue.ts';
import type { Store } from '../store/types.ts';

/**
 * Each role's operator endpoints (README, "Scaling"): /metrics, /healthz and /readyz on
 * GILL_METRICS_PORT. `gill bot` and `gill worker` serve them by default, on different ports so one of
 * each fits on a host; `gill start` only when the port is set. Several workers on one host each need
 * their own GILL_METRICS_PORT.
 */

export type Role = 'start' | 'bot' | 'worker';

export const DEFAULT_METRICS_PORTS: Record<Role, number | null> = { start: null, bot: 9464, worker: 9465 };

/** The port this role serves its endpoints on, or null when they are off. */
export function metricsPort(config: Pick<Config, 'GILL_METRICS_PORT'>, role: Role): number | null {
  if (config.GILL_METRICS_PORT === 'off') return null;
  return config.GILL_METRICS_PORT ?? DEFAULT_METRICS_PORTS[role];
}

/** The parts a role has opened so far; readiness fails, naming the part, until each is there and answers. */
export interface RoleParts {
  store?: Store;
  queue?: JobQueue;
  /** Workers only: whether the engine has loaded its model. */
  modelLoaded?: boolean;
  /** Bots only: the platform adapters connected so far (Discord's gateway ready, Slack's app started). */
  platforms?: string[];
}

export function readinessChecks(parts: RoleParts, role: Role): Record<string, ReadinessCheck> {
  const checks: Record<string, ReadinessCheck> = {
    store: async () => {
      if (!parts.store) throw new Error('not connected yet');
      await parts.store.sql.query('SELECT 1');
      return true;
    },
    queue: async () => {
      if (!parts.queue) throw new Error('not connected yet');
      await parts.queue.depth();
      return true;
    },
  };
  if (role !== 'bot') checks.model = () => parts.modelLoaded === true;
  // A bot that answers before its gateway session is up would lose the interactions sent meanwhile.
  if (role === 'bot') {
    checks.platforms = () => {
      if (!parts.platforms?.length) throw new Error('not connected yet');
      return true;
    };
  }
  return checks;
}

export interface Observer {
  metrics: GillMetrics;
  /** Fill in as the role starts; readiness follows. */
  parts: RoleParts;
  /** Where the endpoints are, when served. */
  url: string | null;
  close(): Promise<void>;
}

/**
 * The role's metrics, with the endpoints served when its port is on. Call early, so /healthz answers and
 * /readyz says what is still missing while the role starts.
 */
export async function observe(config: Config, role: Role, logger: Logger): Promise<Observer> {
  const metrics = createMetrics({ role });
  const parts: RoleParts = {};
  metrics.setQueueDepthSource(async () => {
    if (!parts.queue) throw new Error('queue not connected yet');
    return parts.queue.depth();
  });
  const port = metricsPort(config, role);
  let server: MetricsServer | null = null;
  if (port !== null) {
    server = await startMetricsServer({
      metrics,
      port,
      readiness: readinessChecks(parts, role),
      logger,
    }).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'EADDRINUSE') throw error;
      throw new ConfigError([
        `GILL_METRICS_PORT: port ${port} is in use (another ${role} on this host? give each process its own port, or \`off\`)`,
      ]);
    });
    logger.info({ metrics: `${server.url}/metrics`, ready: `${server.url}/readyz` }, 'metrics served');
  }
  return { metrics, parts, url: server?.url ?? null, close: async () => server?.close() };
}
