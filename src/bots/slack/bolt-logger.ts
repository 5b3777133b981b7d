import { type Logger as BoltLogger, LogLevel } from '@slack/bolt';
import type { Logger } from '../../log.ts';

/** Bolt and its WebClient log through the app's pino logger (with its secret redaction), not the console. */
export function boltLogger(logger: Logger): BoltLogger {
  let level = toBoltLevel(logger.level);
  const format = (parts: unknown[]) =>
    parts
      .map((p) => (typeof p === 'string' ? p : p instanceof Error ? p.message : JSON.stringify(p)))
      .join(' ');
  return {
    debug: (...msg) => logger.debug(format(msg)),
    info: (...msg) => logger.info(format(msg)),
    warn: (...msg) => logger.warn(format(msg)),
    error: (...msg) => logger.error(format(msg)),
    setLevel: (next) => {
      level = next;
    },
    getLevel: () => level,
    setName: () => {},
  };
}

function toBoltLevel(level: string): LogLevel {
  if (level === 'debug' || level === 'trace') return LogLevel.DEBUG;
  if (level === 'info') return LogLevel.INFO;
  if (level === 'warn') return LogLevel.WARN;
  return LogLevel.ERROR;
}
