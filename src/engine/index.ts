import type { Config } from '../config.ts';
import type { Engine } from '../jobs.ts';
import type { Logger } from '../log.ts';
import type { Store } from '../store/types.ts';
import { loadBundle } from './bundle.ts';
import { GillModel } from './gill/model.ts';
import { GillEngine, type GillEngineOptions } from './gill-engine.ts';

/**
 * The engine factory every role calls: loads and warms the model bundle at config.modelDir (on the
 * configured execution provider and thread count) and returns the GILL engine over it.
 */
export async function createEngine(
  config: Config,
  store: Store,
  logger: Logger,
  options: GillEngineOptions = {},
): Promise<GillEngine & Engine> {
  const started = performance.now();
  const bundle = await loadBundle(config.modelDir, {
    executionProvider: config.GILL_EXECUTION_PROVIDER,
    threads: config.GILL_THREADS,
  });
  try {
    const model = new GillModel(bundle);
    logger.info(
      {
        bundle: bundle.manifest.name,
        dir: bundle.dir,
        executionProvider: bundle.executionProvider,
        threads: bundle.threads ?? 'auto',
        ms: Math.round(performance.now() - started),
        ...(bundle.verified && {
          format: bundle.manifest.format,
          bytes: bundle.verified.bytes,
          checksumMs: bundle.verified.hashMs === null ? 'skipped' : Math.round(bundle.verified.hashMs),
        }),
      },
      'model bundle loaded',
    );
    return new GillEngine(model, store, logger, options);
  } catch (error) {
    await bundle.close();
    throw error;
  }
}
