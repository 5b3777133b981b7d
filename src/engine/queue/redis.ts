import { Redis } from 'ioredis';
import type { Logger } from '../../log.ts';
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
  const client = new Redis(url, {
    lazyConnect: true,
    connectTimeout: timeoutMs,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.ping();
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new QueueUnavailableError(`Redis at ${redactRedisUrl(url)} is unreachable: ${reason}`, {
      cause: error,
    });
  } finally {
    client.disconnect();
  }
}
