import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../log.ts';
import type { GillMetrics } from './metrics.ts';

/**
 * The operator's endpoints (#14 §4): /metrics (Prometheus text format), /healthz (the process answers)
 * and /readyz (every readiness check passes: store, queue, model loaded; 503 naming those that do not).
 */

/** A readiness check: true when ready; a throw counts as not ready, with its message. */
export type ReadinessCheck = () => boolean | Promise<boolean>;

export interface MetricsServerOptions {
  metrics: GillMetrics;
  port: number;
  host?: string;
  readiness: Record<string, ReadinessCheck>;
  logger?: Logger;
  /** How long one readiness check may take before it counts as not ready. */
  checkTimeoutMs?: number;
}

export interface MetricsServer {
  readonly url: string;
  close(): Promise<void>;
}

export async function startMetricsServer(options: MetricsServerOptions): Promise<MetricsServer> {
  const { metrics, readiness, logger } = options;
  const timeoutMs = options.checkTimeoutMs ?? 2000;
  const server = http.createServer((request, response) => {
    const path = new URL(request.url ?? '/', 'http://localhost').pathname;
    const reply = (status: number, type: string, body: string) => {
      response.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      response.end(body);
    };
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      reply(405, 'text/plain', 'Only GET is served here.\n');
      return;
    }
    const handle = async () => {
      switch (path) {
        case '/metrics':
          return reply(200, metrics.registry.contentType, await metrics.registry.metrics());
        case '/healthz':
          return reply(200, 'text/plain', 'ok\n');
        case '/readyz': {
          const results = await checkAll(readiness, timeoutMs);
          const ready = Object.values(results).every((result) => result === 'ok');
          return reply(
            ready ? 200 : 503,
            'application/json',
            `${JSON.stringify({ ready, checks: results })}\n`,
          );
        }
        default:
          return reply(404, 'text/plain', 'Not found: try /metrics, /healthz or /readyz.\n');
      }
    };
    handle().catch((error: unknown) => {
      logger?.error({ err: error, path }, 'metrics endpoint failed');
      if (!response.headersSent) reply(500, 'text/plain', 'internal error\n');
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host ?? '0.0.0.0', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { address, port } = server.address() as AddressInfo;
  return {
    url: `http://${address.includes(':') ? `[${address}]` : address}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** Runs every check at once; each gives 'ok', 'not ready' or the reason it failed. */
async function checkAll(
  checks: Record<string, ReadinessCheck>,
  timeoutMs: number,
): Promise<Record<string, string>> {
  const entries = await Promise.all(
    Object.entries(checks).map(async ([name, check]) => {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      });
      try {
        const ready = await Promise.race([Promise.resolve().then(check), timeout]);
        return [name, ready ? 'ok' : 'not ready'] as const;
      } catch (error) {
        return [name, error instanceof Error ? error.message : String(error)] as const;
      } finally {
        clearTimeout(timer);
      }
    }),
  );
  return Object.fromEntries(entries);
}
