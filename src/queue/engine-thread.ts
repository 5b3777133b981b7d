import { type MessagePort, parentPort, Worker, workerData } from 'node:worker_threads';
import type { Engine } from '../jobs.ts';
import { type JobPayload, type JobProgress, type JobResult, UserInputError } from '../jobs.ts';
import type { Store } from '../store/types.ts';
import { JobCancelledError, WorkerShutdownError } from './errors.ts';

/**
 * Runs an engine in a worker thread behind the Engine interface. onnxruntime-node runs inference
 * synchronously on the calling thread; in a thread of its own it cannot starve the worker's event loop,
 * which must keep renewing the queue lock, hear cancellations and answer SIGTERM while a job runs.
 *
 * The thread imports `module` and awaits `module[exportName](options, { store })` for its Engine; options
 * cross by structured clone, so they are plain data (the config). The factory opens its own connections,
 * or, where the store can't be opened twice (embedded PGlite belongs to the process that opened it),
 * uses `store`: this thread's store, reached through messages to the starting thread (a StoreBridge).
 */

export interface EngineThreadSpec {
  /** File URL or path of the module with the engine factory. */
  module: string;
  exportName: string;
  options: unknown;
}

type ToThread =
  | { type: 'run'; id: number; payload: JobPayload }
  | { type: 'abort'; id: number; reason: 'cancelled' | 'shutdown' }
  | { type: 'close' }
  | { type: 'storeResult'; id: number; value: unknown }
  | { type: 'storeError'; id: number; error: WireError };

/** Store namespaces the engine thread may call through the bridge. */
const BRIDGED = ['communities', 'blobs', 'images', 'jobs'] as const;
type Bridged = (typeof BRIDGED)[number];

/** What the thread's factory gets besides its options. */
export interface EngineThreadContext {
  /** The starting thread's store, when it was bridged (startEngineThread's `store`); null otherwise. */
  store: Store | null;
}

interface WireError {
  name: string;
  message: string;
  code?: string;
}

type FromThread =
  | { type: 'ready' }
  | { type: 'startFailed'; error: WireError }
  | { type: 'progress'; id: number; progress: JobProgress }
  | { type: 'result'; id: number; result: JobResult }
  | { type: 'error'; id: number; error: WireError }
  | { type: 'closed' }
  | { type: 'store'; id: number; namespace: Bridged; method: string; args: unknown[] };

const THREAD_MAIN = new URL('./engine-thread-main.mjs', import.meta.url);

function toWire(error: unknown): WireError {
  if (error instanceof Error) {
    return {
      name: error.name,
      message: error.message,
      code: error instanceof UserInputError ? error.code : undefined,
    };
  }
  return { name: 'Error', message: String(error) };
}

function fromWire(wire: WireError): Error {
  if (wire.name === 'UserInputError') return new UserInputError(wire.message, wire.code);
  const error = new Error(wire.message);
  error.name = wire.name;
  return error;
}

interface Pending {
  resolve(result: JobResult): void;
  reject(error: Error): void;
  progress(update: JobProgress): void;
}

/**
 * Starts the thread and resolves once its engine is loaded. onExit hears of a thread that died. With
 * `store`, the thread's factory gets it (bridged: each call runs here, its arguments and result cloned).
 */
export function startEngineThread(
  spec: EngineThreadSpec,
  onExit?: (error: Error) => void,
  options: { store?: Store } = {},
): Promise<Engine> {
  const thread = new Worker(THREAD_MAIN, { workerData: { ...spec, bridged: Boolean(options.store) } });
  const pending = new Map<number, Pending>();
  let nextId = 1;
  let broken: Error | null = null;
  let closing = false;
  let closed: (() => void) | undefined;

  const fail = (error: Error) => {
    if (broken) return;
    broken = error;
    for (const job of pending.values()) job.reject(error);
    pending.clear();
    if (!closing) onExit?.(error);
  };

  const engine: Engine = {
    run(payload, ctx) {
      if (broken) return Promise.reject(broken);
      const id = nextId++;
      return new Promise<JobResult>((resolve, reject) => {
        const onAbort = () => {
          const reason = ctx.signal.reason instanceof WorkerShutdownError ? 'shutdown' : 'cancelled';
          thread.postMessage({ type: 'abort', id, reason } satisfies ToThread);
        };
        const done = () => {
          ctx.signal.removeEventListener('abort', onAbort);
          pending.delete(id);
        };
        pending.set(id, {
          resolve: (result) => {
            done();
            resolve(result);
          },
          reject: (error) => {
            done();
            reject(error);
          },
          progress: ctx.progress,
        });
        thread.postMessage({ type: 'run', id, payload } satisfies ToThread);
        if (ctx.signal.aborted) onAbort();
        else ctx.signal.addEventListener('abort', onAbort, { once: true });
      });
    },
    async close() {
      if (closing) return;
      closing = true;
      if (broken) return;
      await new Promise<void>((resolve) => {
        closed = resolve;
        thread.postMessage({ type: 'close' } satisfies ToThread);
      });
      await thread.terminate();
    },
  };

  return new Promise<Engine>((resolve, reject) => {
    let started = false;
    thread.on('message', (message: FromThread) => {
      switch (message.type) {
        case 'ready':
          started = true;
          resolve(engine);
          break;
        case 'startFailed':
          reject(fromWire(message.error));
          void thread.terminate();
          break;
        case 'progress':
          pending.get(message.id)?.progress(message.progress);
          break;
        case 'result':
          pending.get(message.id)?.resolve(message.result);
          break;
        case 'error':
          pending.get(message.id)?.reject(fromWire(message.error));
          break;
        case 'closed':
          closed?.();
          break;
        case 'store':
          answerStoreCall(thread, options.store, message);
          break;
      }
    });
    thread.on('error', (error) => (started ? fail(error) : reject(error)));
    thread.on('exit', (code) => {
      closed?.();
      const error = new Error(`the engine thread exited (code ${code})`);
      if (started) fail(error);
      else reject(error);
    });
  });
}

/** Runs a bridged store call from the thread and posts its outcome back. */
function answerStoreCall(
  thread: Worker,
  store: Store | undefined,
  call: { id: number; namespace: Bridged; method: string; args: unknown[] },
): void {
  const run = async () => {
    if (!store || !BRIDGED.includes(call.namespace))
      throw new Error('the store is not bridged to this thread');
    const namespace = store[call.namespace] as unknown as Record<
      string,
      (...args: unknown[]) => Promise<unknown>
    >;
    const method = namespace[call.method];
    if (typeof method !== 'function') throw new Error(`no store method ${call.namespace}.${call.method}`);
    return method.apply(namespace, call.args);
  };
  run().then(
    (value) => thread.postMessage({ type: 'storeResult', id: call.id, value } satisfies ToThread),
    (error: unknown) =>
      thread.postMessage({ type: 'storeError', id: call.id, error: toWire(error) } satisfies ToThread),
  );
}

/** The thread's view of the starting thread's store: every call goes there as a message. */
function bridgedStore(port: MessagePort): { store: Store; settle(message: ToThread): boolean } {
  const calls = new Map<number, { resolve(value: unknown): void; reject(error: Error): void }>();
  let nextId = 1;
  const namespace = (name: Bridged) =>
    new Proxy(
      {},
      {
        get: (_target, method) => {
          if (typeof method !== 'string' || method === 'then') return undefined;
          return (...args: unknown[]) =>
            new Promise((resolve, reject) => {
              const id = nextId++;
              calls.set(id, { resolve, reject });
              port.postMessage({ type: 'store', id, namespace: name, method, args } satisfies FromThread);
            });
        },
      },
    );
  const store = Object.fromEntries(BRIDGED.map((name) => [name, namespace(name)])) as unknown as Store;
  return {
    store,
    settle(message) {
      if (message.type !== 'storeResult' && message.type !== 'storeError') return false;
      const call = calls.get(message.id);
      calls.delete(message.id);
      if (message.type === 'storeResult') call?.resolve(message.value);
      else call?.reject(fromWire(message.error));
      return true;
    },
  };
}

/** The thread's side; called by engine-thread-main.mjs. */
export async function serveEngineThread(): Promise<void> {
  const port = parentPort as MessagePort;
  const spec = workerData as EngineThreadSpec & { bridged: boolean };
  const bridge = spec.bridged ? bridgedStore(port) : null;
  // Store answers can arrive while the factory still loads (it may read the store).
  if (bridge) port.on('message', (message: ToThread) => bridge.settle(message));
  let engine: Engine;
  try {
    const module = await import(spec.module);
    const context: EngineThreadContext = { store: bridge?.store ?? null };
    engine = await module[spec.exportName](spec.options, context);
  } catch (error) {
    port.postMessage({ type: 'startFailed', error: toWire(error) } satisfies FromThread);
    return;
  }
  const controllers = new Map<number, AbortController>();
  port.on('message', async (message: ToThread) => {
    if (message.type === 'storeResult' || message.type === 'storeError') return;
    if (message.type === 'abort') {
      const reason = message.reason === 'shutdown' ? new WorkerShutdownError() : new JobCancelledError();
      controllers.get(message.id)?.abort(reason);
    } else if (message.type === 'close') {
      await engine.close();
      port.postMessage({ type: 'closed' } satisfies FromThread);
    } else {
      const { id } = message;
      const controller = new AbortController();
      controllers.set(id, controller);
      try {
        const result = await engine.run(message.payload, {
          progress: (progress) => port.postMessage({ type: 'progress', id, progress } satisfies FromThread),
          signal: controller.signal,
        });
        port.postMessage({ type: 'result', id, result } satisfies FromThread);
      } catch (error) {
        port.postMessage({ type: 'error', id, error: toWire(error) } satisfies FromThread);
      } finally {
        controllers.delete(id);
      }
    }
  });
  port.postMessage({ type: 'ready' } satisfies FromThread);
}
