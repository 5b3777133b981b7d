import type { Logger } from '../log.ts';

/**
 * How a long-running role (`gill start`, `gill bot`, `gill worker`) stops. SIGTERM and SIGINT are heard
 * from the moment the role begins, so a signal during start-up is not lost (start-up waits take `signal`
 * and end early), and for the rest of the process's life, so no later signal falls through to a handler
 * some library left behind. The first signal starts the shutdown and a deadline: when closing the role's
 * connections and its running job has not let the process end by then, it exits anyway with status 1.
 * Later signals are only logged.
 */

export interface Shutdown {
  /** Aborted by the first signal. */
  readonly signal: AbortSignal;
  /** Resolves with the first signal. */
  readonly requested: Promise<NodeJS.Signals>;
}

const SIGNALS: NodeJS.Signals[] = ['SIGTERM', 'SIGINT'];

export function watchShutdown(logger: Logger, deadlineMs: number): Shutdown {
  const controller = new AbortController();
  let resolve!: (signal: NodeJS.Signals) => void;
  const requested = new Promise<NodeJS.Signals>((r) => {
    resolve = r;
  });
  const onSignal = (signal: NodeJS.Signals) => {
    if (controller.signal.aborted) {
      logger.info({ signal }, 'already shutting down');
      return;
    }
    controller.abort(new Error(`stopped by ${signal}`));
    resolve(signal);
    // Unreferenced: it never keeps the process alive, only ends it when something else does.
    setTimeout(() => {
      logger.error({ deadlineMs }, 'shutdown did not finish in time; exiting');
      process.exit(1);
    }, deadlineMs).unref();
  };
  for (const signal of SIGNALS) process.on(signal, onSignal);
  return { signal: controller.signal, requested };
}
