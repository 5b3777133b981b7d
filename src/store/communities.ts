import { communitySchema, UserInputError } from '../jobs.ts';
import { parseConfigPatch, resolveConfig } from './community-config.ts';
import { foreignKeyViolation, json } from './rows.ts';
import type { SqlClient } from './sql-client.ts';
import type { Store } from './types.ts';
import { requireRowId } from './validate.ts';

/** Communities (a Discord guild, a Slack team, the playground) and the settings their admins change. */
export function communityRepository(db: SqlClient): Store['communities'] {
  return {
    async ensure(ref) {
      const parsed = communitySchema.safeParse(ref);
      if (!parsed.success) {
        throw new UserInputError(`Invalid community: ${parsed.error.issues[0]?.message ?? 'bad value'}`);
      }
      const { platform, externalId } = parsed.data;
      const find = () =>
        db.query<{ id: string }>(
          'SELECT id::text AS id FROM communities WHERE platform = $1 AND external_id = $2',
          [platform, externalId],
        );
      const row =
        (await find())[0] ??
        (
          await db.query<{ id: string }>(
            `INSERT INTO communities (platform, external_id) VALUES ($1, $2)
             ON CONFLICT (platform, external_id) DO NOTHING RETURNING id::text AS id`,
            [platform, externalId],
          )
        )[0] ??
        (await find())[0]!;
      return { id: row.id, platform, externalId };
    },

    async getConfig(communityId) {
      requireRowId(communityId, 'community id');
      const [row] = await db.query<{ settings: unknown }>(
        `SELECT cc.settings FROM communities c LEFT JOIN community_config cc ON cc.community_id = c.id
         WHERE c.id = $1`,
        [communityId],
      );
      if (!row) throw new RangeError(`no community ${communityId}`);
      return resolveConfig(row.settings);
    },

    async updateConfig(communityId, patch) {
      requireRowId(communityId, 'community id');
      const valid = parseConfigPatch(patch);
      try {
        const [row] = await db.query<{ settings: unknown }>(
          `INSERT INTO community_config (community_id, settings) VALUES ($1, $2::text::jsonb)
           ON CONFLICT (community_id) DO UPDATE
             SET settings = community_config.settings || EXCLUDED.settings, updated_at = now()
           RETURNING settings`,
          [communityId, json(valid)],
        );
        return resolveConfig(row!.settings);
      } catch (error) {
        if (foreignKeyViolation(error)) throw new RangeError(`no community ${communityId}`);
        throw error;
      }
    },
  };
}
