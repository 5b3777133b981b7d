import type { Logger } from '../log.ts';
import type { QueueEvent } from './queue.ts';

/** The subscribers of a queue's events; one failing listener is logged and never stops the others. */
export class QueueListeners {
  private readonly listeners = new Set<(event: QueueEvent) => void>();

  constructor(private readonly logger?: Logger) {}

  add(listener: (event: QueueEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(event: QueueEvent): void {
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch (error) {
        this.logger?.error({ err: error, event: event.type, jobId: event.jobId }, 'queue listener failed');
      }
    }
  }

  clear(): void {
    this.listeners.clear();
  }
}
