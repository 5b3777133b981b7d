import { UserInputError } from '../../jobs.ts';
import type { Command } from '../core/turn.ts';

/**
 * The text after /imagine and /find where commands arrive as one string (Slack's slash commands, the
 * playground's message box), so options are written as flags: `/imagine a red star --seed 42 --steps 20`,
 * `/find a green circle --k 6`. Discord has typed options instead (discord/commands.ts).
 */

const FLAG = /(?:^|\s)--([a-z]+)(?:[=\s]+(\S+))?/gi;

function readFlags(text: string, allowed: Record<string, { min: number; max: number }>, usage: string) {
  const values: Record<string, number> = {};
  const rest = text.replace(FLAG, (_, name: string, value: string | undefined) => {
    const key = name.toLowerCase();
    const range = allowed[key];
    if (!range) {
      throw new UserInputError(`Unknown option --${name}. Usage: ${usage}`, 'bad_input');
    }
    const n = Number(value);
    if (value === undefined || !Number.isInteger(n) || n < range.min || n > range.max) {
      throw new UserInputError(
        `--${key} must be a whole number from ${range.min} to ${range.max}, got "${value ?? ''}"`,
        'bad_input',
      );
    }
    values[key] = n;
    return ' ';
  });
  return { values, rest: rest.replace(/\s+/g, ' ').trim() };
}

export const IMAGINE_USAGE = '`/imagine <prompt> [--seed N] [--steps N]`';
export const FIND_USAGE = '`/find <what to look for> [--k N]`';

export function parseImagine(text: string): Extract<Command, { kind: 'imagine' }> {
  const { values, rest } = readFlags(
    text,
    { seed: { min: 0, max: 2 ** 31 - 1 }, steps: { min: 1, max: 150 } },
    IMAGINE_USAGE,
  );
  if (!rest) throw new UserInputError(`Say what to draw: ${IMAGINE_USAGE}`, 'bad_input');
  return {
    kind: 'imagine',
    prompt: rest,
    ...(values.seed !== undefined ? { seed: values.seed } : {}),
    ...(values.steps !== undefined ? { steps: values.steps } : {}),
  };
}

export function parseFind(text: string): Extract<Command, { kind: 'find' }> {
  const { values, rest } = readFlags(text, { k: { min: 1, max: 20 } }, FIND_USAGE);
  if (!rest) throw new UserInputError(`Say what to look for: ${FIND_USAGE}`, 'bad_input');
  return { kind: 'find', query: rest, ...(values.k !== undefined ? { k: values.k } : {}) };
}
