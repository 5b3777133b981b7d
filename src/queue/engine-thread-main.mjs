// Entry of the engine thread: TypeScript sources load through tsx here too, as in bin/gill.mjs.
import { register } from 'tsx/esm/api';

register();
const { serveEngineThread } = await import('./engine-thread.ts');
await serveEngineThread();
