import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import type { Logger } from '../log.ts';
import { QueueUnavailableError } from './errors.ts';

/** The URL without its password, for messages and logs. */
export function redactRedisUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return 'an invalid Redis URL';
  }
}

/**
 * A connection for producers (bots adding jobs, cancelling, asking positions): commands fail at once
 * while Redis is down instead of piling up, so a user hears about it instead of waiting forever.
 */
export function producerConnection(url: string, logger?: Logger): Redis {
  const client = new Redis(url, { enableOfflineQueue: false, maxRetriesPerRequest: 1, connectTimeout: 5000 });
  client.on('error', (error) =>
    logger?.warn({ err: error, redis: redactRedisUrl(url) }, 'Redis connection error'),
  );
  return client;
}

/** Options for long-lived consumers (workers, event readers): wait for Redis to come back, as BullMQ requires. */
export function consumerConnectionOptions(url: string) {
  return { url, maxRetriesPerRequest: null };
}

/** Connects once and pings: a clear error when Redis is unreachable. */
export async function checkRedis(url: string, timeoutMs = 3000): Promise<void> {
  await withShortClient(url, timeoutMs, async () => {});
}

export interface EvictionPolicyReport {
  /** Redis's maxmemory-policy, or null when Redis refuses to tell (CONFIG disabled, as on some hosts). */
  policy: string | null;
  /** True only for `noeviction`. */
  ok: boolean;
  /** One sentence for `gill doctor`. */
  message: string;
}

/**
 * Redis's maxmemory-policy, for `gill doctor`. Anything but `noeviction` lets Redis drop queue keys when
 * memory runs short: jobs vanish from the queue (the reconciler then adds them again, late) and BullMQ's
 * own bookkeeping breaks. Throws QueueUnavailableError when Redis is unreachable.
 */
export async function redisEvictionPolicy(url: string, timeoutMs = 3000): Promise<EvictionPolicyReport> {
  return withShortClient(url, timeoutMs, async (client) => {
    let policy: string | null;
    try {
      const reply = (await client.config('GET', 'maxmemory-policy')) as string[];
      policy = reply[1] ?? null;
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      return {
        policy: null,
        ok: false,
        message: `Redis did not say its maxmemory-policy (${reason}); make sure it is noeviction.`,
      };
    }
    if (policy === 'noeviction') {
      return { policy, ok: true, message: 'Redis maxmemory-policy is noeviction.' };
    }
    return {
      policy,
      ok: false,
      message: `Redis maxmemory-policy is ${policy ?? 'not set'}: Redis may evict queued jobs when memory runs short. Set maxmemory-policy noeviction.`,
    };
  });
}

/** Connects and pings, for one short exchange: a clear error when Redis is unreachable. */
async function withShortClient<T>(
  url: string,
  timeoutMs: number,
  use: (client: Redis) => Promise<T>,
): Promise<T> {
  const client = new Redis(url, {
    lazyConnect: true,
    connectTimeout: timeoutMs,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  // ioredis rejects with "Connection is closed."; the socket error says why (ECONNREFUSED...).
  let socketError: Error | undefined;
  client.on('error', (error: Error) => {
    socketError ??= error;
  });
  try {
    try {
      await client.connect();
      await client.ping();
    } catch (error) {
      const reason = (socketError ?? (error instanceof Error ? error : new Error(String(error)))).message;
      throw new QueueUnavailableError(`Redis at ${redactRedisUrl(url)} is unreachable: ${reason}`, {
        cause: error,
      });
    }
    return await use(client);
  } finally {
    client.disconnect();
  }
}

/**
 * For long-running roles: while Redis is unreachable, logs and retries with exponential backoff
 * (1 s doubling to 30 s) until it answers or the signal aborts.
 */
export async function openWhenAvailable<T>(
  open: () => Promise<T>,
  logger: Logger,
  options: { signal?: AbortSignal; initialDelayMs?: number; maxDelayMs?: number } = {},
): Promise<T> {
  let delay = options.initialDelayMs ?? 1000;
  for (let attempt = 1; ; attempt++) {
    try {
      return await open();
    } catch (error) {
      if (!(error instanceof QueueUnavailableError)) throw error;
      logger.warn({ attempt, retryInMs: delay, err: error.message }, 'job queue unreachable; retrying');
      await sleep(delay, undefined, { signal: options.signal });
      delay = Math.min(delay * 2, options.maxDelayMs ?? 30_000);
    }
  }
}
