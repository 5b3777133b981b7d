import { FetchRefusedError } from '../core/fetch-guard.ts';

/** What the playground's HTTP answers say when a request from the page is refused. */

/** A request the page made that is refused; `status` is the HTTP status, the message is for the person. */
export class PlaygroundRefusal extends Error {
  constructor(
    message: string,
    readonly status = 400,
  ) {
    super(message);
    this.name = 'PlaygroundRefusal';
  }
}

/** An upload the fetch guard refused, as the HTTP status and sentence the page shows; other errors unchanged. */
export function uploadRefusal(error: unknown): unknown {
  if (!(error instanceof FetchRefusedError)) return error;
  const status =
    error.reason === 'too_large'
      ? 413
      : error.reason === 'not_image' || error.reason === 'corrupt'
        ? 415
        : 400;
  return new PlaygroundRefusal(`${error.message}.`.replace(/\.\.$/, '.'), status);
}
