import type { JobPayload } from '../../src/jobs.ts';

/** Parks a test engine's jobs (index jobs excepted) between `hold()` and `release()`. */
export class JobGate {
  private closed: Promise<void> | null = null;
  private open: (() => void) | null = null;

  hold(): void {
    this.closed = new Promise((resolve) => {
      this.open = resolve;
    });
  }

  release(): void {
    this.open?.();
    this.closed = null;
  }

  async pass(kind: JobPayload['kind']): Promise<void> {
    if (this.closed && kind !== 'index') await this.closed;
  }
}
