import { Writable } from 'node:stream';
import { createLogger, type Logger } from '../../src/log.ts';

/** The product's logger, writing its JSON lines into `lines` as they would reach stdout. */
export function captureLogger(lines: string[], level = 'debug'): Logger {
  return createLogger(
    level,
    new Writable({
      write(chunk, _enc, done) {
        lines.push(String(chunk));
        done();
      },
    }),
  );
}

/** Every form a file's first bytes take when logged: raw, base64, hex, and JSON's number list for a Buffer. */
export function byteForms(bytes: Buffer): string[] {
  const head = bytes.subarray(0, 24);
  return [
    head.toString('latin1'),
    head.toString('base64').slice(0, 24),
    head.toString('hex'),
    Array.from(head).join(','),
  ];
}
