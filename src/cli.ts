import { Command, CommanderError } from 'commander';
import { type Config, ConfigError, loadConfig } from './config.ts';
import { UserInputError } from './jobs.ts';

/**
 * The `gill` command line. Each command's work lives in its own module, imported only when that command
 * runs, so `gill migrate` does not load ONNX Runtime and `gill ask` does not load discord.js.
 */

const EXIT_CONFIG = 2;
const OPERATIONAL_ERRORS = new Set(['StoreConnectionError', 'QueueUnavailableError', 'BundleError']);

function config(): Config {
  return loadConfig();
}

function intOption(name: string, min: number, max: number) {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new UserInputError(`${name} must be a whole number from ${min} to ${max}, got "${value}"`);
    }
    return n;
  };
}

function numberOption(name: string, min: number, max: number) {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isFinite(n) || n < min || n > max) {
      throw new UserInputError(`${name} must be a number from ${min} to ${max}, got "${value}"`);
    }
    return n;
  };
}

export function buildProgram(): Command {
  const program = new Command('gill')
    .description('GILL for chat communities: one model that reads, answers, retrieves and generates images')
    .showHelpAfterError()
    .exitOverride();

  program
    .command('start')
    .description(
      'run everything in one process: adapters, engine, database and queue (embedded unless configured)',
    )
    .action(async () => (await import('./roles/start.ts')).runStart(config()));

  program
    .command('bot')
    .description('run the platform adapters only; jobs go to Redis (REDIS_URL) for `gill worker`')
    .action(async () => (await import('./roles/bot.ts')).runBot(config()));

  program
    .command('worker')
    .description('run the engine only, taking jobs from Redis (REDIS_URL); one per GPU')
    .action(async () => (await import('./roles/worker.ts')).runWorker(config()));

  program
    .command('migrate')
    .description('apply database migrations (also done at every start)')
    .action(async () => (await import('./store/migrate-command.ts')).runMigrate(config()));

  program
    .command('doctor')
    .description('say what is configured and reachable, and what is missing')
    .action(async () => (await import('./roles/doctor.ts')).runDoctor(config()));

  program
    .command('ask')
    .description('one conversation turn: items in order, each a text or @path/to/image')
    .argument('<items...>', 'texts and @image paths, in conversation order')
    .option('--out <dir>', 'folder for generated or retrieved images')
    .option('--community <id>', 'community whose gallery retrieval searches', 'local')
    .option('--seed <n>', 'sampling seed', intOption('--seed', 0, 2 ** 31 - 1))
    .action(async (items: string[], opts) =>
      (await import('./roles/cli-commands.ts')).runAsk(config(), items, opts),
    );

  program
    .command('imagine')
    .description('generate an image from a prompt with the diffusion model alone')
    .argument('<prompt>', 'what to draw')
    .requiredOption('--out <file>', 'PNG file to write')
    .option('--steps <n>', 'denoising steps', intOption('--steps', 1, 150))
    .option('--seed <n>', 'noise seed', intOption('--seed', 0, 2 ** 31 - 1))
    .option('--guidance <g>', 'classifier-free guidance scale', numberOption('--guidance', 0, 30))
    .option('--scheduler <name>', 'ddim, pndm or dpm++ (also dpmsolver++); the bundle default when left out')
    .action(async (prompt: string, opts) =>
      (await import('./roles/cli-commands.ts')).runImagine(config(), prompt, opts),
    );

  program
    .command('index')
    .description('index image files or folders into a community gallery')
    .argument('<paths...>', 'image files or folders')
    .option('--community <id>', 'community to index into', 'local')
    .action(async (paths: string[], opts) =>
      (await import('./roles/cli-commands.ts')).runIndex(config(), paths, opts),
    );

  program
    .command('find')
    .description('search a community gallery by text')
    .argument('<query>', 'what to look for')
    .option('-k <n>', 'how many results', intOption('-k', 1, 50), 5)
    .option('--community <id>', 'community to search', 'local')
    .action(async (query: string, opts) =>
      (await import('./roles/cli-commands.ts')).runFind(config(), query, opts),
    );

  const discord = program.command('discord').description('Discord set-up');
  discord
    .command('register')
    .description('register the slash commands with Discord (once per deploy, not at every start)')
    .option('--guild <id>', 'register in one guild only (instant; for testing)')
    .action(async (opts) => (await import('./bots/discord/register.ts')).runRegister(config(), opts));

  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      process.exitCode = error.exitCode;
    } else if (error instanceof ConfigError) {
      for (const problem of error.problems) process.stderr.write(`configuration error: ${problem}\n`);
      process.exitCode = EXIT_CONFIG;
    } else if (error instanceof UserInputError) {
      process.stderr.write(`error: ${error.message}\n`);
      process.exitCode = EXIT_CONFIG;
    } else if (error instanceof Error && OPERATIONAL_ERRORS.has(error.name)) {
      // Unreachable services and broken bundles: the message says what and where; a stack adds nothing.
      process.stderr.write(`error: ${error.message}\n`);
      process.exitCode = 1;
    } else {
      process.stderr.write(
        `error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
      );
      process.exitCode = 1;
    }
  }
}
