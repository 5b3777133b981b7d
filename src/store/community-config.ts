import { z } from 'zod';
import { UserInputError } from '../jobs.ts';
import { type CommunityConfig, DEFAULT_COMMUNITY_CONFIG } from './types.ts';

/**
 * Validation of per-community settings. Admins change them through bot commands, so a bad value is the
 * admin's input error and names the setting; stored values that a later version no longer accepts fall
 * back to the default instead of breaking the community.
 */

const count = (max: number) =>
  z.number().int('must be a whole number').min(1, 'must be at least 1').max(max, `must be at most ${max}`);

export const communityConfigSchema = z.strictObject({
  generationEnabled: z.boolean('must be true or false'),
  retrievalEnabled: z.boolean('must be true or false'),
  // The same range the chat payload accepts.
  retrieveBias: z
    .number('must be a number')
    .min(-10, 'must be from -10 to 10')
    .max(10, 'must be from -10 to 10'),
  // A chat payload carries at most 200 context items.
  contextMessages: count(200),
  userJobsPerMinute: count(1000),
  userConcurrentJobs: count(100),
  communityConcurrentJobs: count(1000),
  indexedChannels: z
    .array(
      z
        .string()
        .trim()
        .min(1, 'channel ids must not be empty')
        .max(100, 'channel ids are at most 100 characters'),
    )
    .max(500, 'at most 500 channels')
    .transform((ids) => [...new Set(ids)]),
});

/** Validates an admin's change; throws UserInputError naming the first bad setting. */
export function parseConfigPatch(patch: unknown): Partial<CommunityConfig> {
  const parsed = communityConfigSchema.partial().safeParse(patch);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    if (issue.code === 'unrecognized_keys') {
      throw new UserInputError(`Unknown setting ${issue.keys.map((k) => `"${k}"`).join(', ')}`);
    }
    const where = issue.path.length ? `${String(issue.path[0])}: ` : '';
    throw new UserInputError(`Invalid setting ${where}${issue.message}`);
  }
  return parsed.data;
}

/** Defaults overlaid with the stored settings that are still valid. */
export function resolveConfig(stored: unknown): CommunityConfig {
  const config: Record<string, unknown> = { ...DEFAULT_COMMUNITY_CONFIG };
  if (stored && typeof stored === 'object') {
    for (const [key, value] of Object.entries(stored)) {
      const field = communityConfigSchema.shape[key as keyof CommunityConfig];
      const parsed = field?.safeParse(value);
      if (parsed?.success) config[key] = parsed.data;
    }
  }
  return config as unknown as CommunityConfig;
}
