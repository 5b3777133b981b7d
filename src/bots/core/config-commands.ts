import { UserInputError } from '../../jobs.ts';
import type { Community, CommunityConfig } from '../../store/types.ts';
import type { SubmitOutcome } from './bot-core.ts';
import { configPatch, describeConfig, gillHelp, validateConfigChange } from './commands.ts';
import type { CoreDeps } from './deps.ts';
import type { ConfigChange, InboundTurn } from './turn.ts';

/**
 * `/gill` configuration: shown or changed at once, by the community's admins only (the platform says who
 * they are in the turn). Parsing and wording live in commands.ts.
 */
export async function answerConfig(
  deps: CoreDeps,
  turn: InboundTurn,
  change: ConfigChange,
  community: Community,
  config: CommunityConfig,
): Promise<SubmitOutcome> {
  const { store, logger, channelMention } = deps;
  const context = { community: turn.community, user: turn.user.id, change };
  if (!turn.user.isAdmin) {
    logger.info(context, 'config refused: not admin');
    return {
      status: 'refused',
      reason: 'not_admin',
      message: 'Only admins of this community can change GILL’s settings.',
    };
  }
  if (change.setting === 'show') {
    return { status: 'answered', text: `${describeConfig(config, channelMention)}\n\n${gillHelp()}` };
  }
  try {
    validateConfigChange(change);
  } catch (error) {
    if (error instanceof UserInputError)
      return { status: 'refused', reason: 'bad_input', message: error.message };
    throw error;
  }
  const updated = await store.communities.updateConfig(community.id, configPatch(config, change));
  logger.info(context, 'config changed');
  const text = `Settings updated.\n${describeConfig(updated, channelMention)}`;
  if (change.setting !== 'indexing' || change.enabled) return { status: 'answered', text };
  return { status: 'answered', text: `${text}\n${await indexingOff(deps, community.id, change)}` };
}

/** Indexing turned off for a channel: purges its images when asked, else says how to. */
async function indexingOff(
  deps: CoreDeps,
  communityId: string,
  change: Extract<ConfigChange, { setting: 'indexing' }>,
): Promise<string> {
  const where = deps.channelMention(change.channelId);
  if (!change.purge) {
    return `Images already indexed from ${where} stay retrievable; turn indexing off again with purge to remove them.`;
  }
  const removed = await deps.store.images.deleteByChannel(communityId, change.channelId);
  deps.logger.info({ channelId: change.channelId, removed }, 'indexed images purged');
  return `Removed ${removed} image${removed === 1 ? '' : 's'} indexed from ${where}.`;
}
