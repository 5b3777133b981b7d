import type { webApi } from '@slack/bolt';

/**
 * Who may change GILL's settings in a workspace: its admins and owners (users.info), or the users listed
 * in SLACK_ADMIN_USERS. Answers are cached briefly so a burst of /gill commands makes one lookup.
 */

const CACHE_MS = 5 * 60_000;

export class SlackAdmins {
  private readonly cache = new Map<string, { admin: boolean; until: number }>();

  constructor(
    private readonly client: webApi.WebClient,
    private readonly allowlist: readonly string[],
  ) {}

  async isAdmin(userId: string): Promise<boolean> {
    if (this.allowlist.includes(userId)) return true;
    const hit = this.cache.get(userId);
    if (hit && hit.until > Date.now()) return hit.admin;
    const answer = await this.client.users.info({ user: userId });
    const user = answer.user;
    const admin = Boolean(user?.is_admin || user?.is_owner || user?.is_primary_owner);
    this.cache.set(userId, { admin, until: Date.now() + CACHE_MS });
    if (this.cache.size > 10_000) this.cache.delete(this.cache.keys().next().value as string);
    return admin;
  }
}
