import type { ServerResponse } from 'node:http';
import type { PlaygroundMessage } from './messages.ts';

/**
 * Live updates to every open page over Server-Sent Events: new and changed messages, and the progress of
 * running jobs. A page that reconnects reloads what it shows, so nothing here needs to be replayed.
 */

export type PlaygroundEvent =
  | { type: 'message'; message: PlaygroundMessage }
  | {
      type: 'progress';
      jobId: string;
      threadId: string | null;
      text: string;
      stage: string;
      step?: number;
      steps?: number;
      /** A data: URL of the image being formed, when the engine sends one. */
      preview?: string;
    };

/** A comment line now and then keeps proxies and the browser from dropping an idle stream. */
const KEEPALIVE_MS = 20_000;

export class EventHub {
  private readonly clients = new Set<ServerResponse>();
  private readonly timer: NodeJS.Timeout;

  constructor() {
    this.timer = setInterval(() => {
      for (const client of this.clients) client.write(': keep-alive\n\n');
    }, KEEPALIVE_MS);
    this.timer.unref();
  }

  /** Turns the response into an event stream until the page goes away. */
  attach(response: ServerResponse): void {
    response.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
    });
    // Tells EventSource to reconnect after 2 s when the server restarts.
    response.write('retry: 2000\n\n');
    this.clients.add(response);
    response.on('close', () => this.clients.delete(response));
  }

  publish(event: PlaygroundEvent): void {
    const frame = `event: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`;
    for (const client of this.clients) client.write(frame);
  }

  get size(): number {
    return this.clients.size;
  }

  close(): void {
    clearInterval(this.timer);
    for (const client of this.clients) client.end();
    this.clients.clear();
  }
}
