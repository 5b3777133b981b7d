import { cancelJob } from '../../queue/submit.ts';
import type { JobRecord } from '../../store/types.ts';
import type { CancelOutcome, CancelRequest } from './bot-core.ts';
import type { CoreDeps } from './deps.ts';
import { renderCancelled } from './render.ts';
import { authorKey } from './turn.ts';

/**
 * Cancel on a progress message: allowed to the person who asked and to the community's admins. The
 * cancellation itself is the queue's one path (cancelJob: the store first, then the queue).
 */

/** The person who asked for a job, in the platform's markup. */
function askerOf(deps: CoreDeps, job: JobRecord): string {
  const key = job.authorKey ?? '';
  const userId = key.includes(':')
    ? key.slice(key.indexOf(':') + 1)
    : String(job.replyTarget.data.userId ?? '');
  const name = job.replyTarget.data.askedBy;
  return deps.userMention(userId, typeof name === 'string' ? name : undefined);
}

function alreadyDone(job: JobRecord): CancelOutcome {
  return {
    status: 'refused',
    reason: 'finished',
    message:
      job.status === 'cancelled'
        ? 'This request was already cancelled.'
        : 'This request has already finished, so there is nothing to cancel.',
  };
}

export async function cancelRequest(deps: CoreDeps, request: CancelRequest): Promise<CancelOutcome> {
  const { store, queue } = deps;
  const log = deps.logger.child({
    jobId: request.jobId,
    platform: request.community.platform,
    user: request.user.id,
  });
  const community = await store.communities.ensure(request.community);
  const job = await store.jobs.get(request.jobId);
  if (!job || job.communityId !== community.id || job.kind === 'index') {
    return { status: 'refused', reason: 'not_found', message: 'That request is no longer known.' };
  }
  if (job.status !== 'queued' && job.status !== 'running') return alreadyDone(job);
  const own = job.authorKey === authorKey(request.community.platform, request.user.id);
  if (!own && !(await request.isAdmin())) {
    log.info('cancel refused: not the asker');
    return {
      status: 'refused',
      reason: 'not_allowed',
      message: `Only ${askerOf(deps, job)} can cancel this.`,
    };
  }
  const wasRunning = job.status === 'running';
  if (!(await cancelJob({ store, queue }, job.id))) {
    return alreadyDone((await store.jobs.get(job.id)) ?? job);
  }
  log.info({ byAsker: own, wasRunning }, 'job cancelled');
  const by = own ? undefined : deps.userMention(request.user.id, request.user.displayName);
  return {
    status: 'cancelled',
    job: (await store.jobs.get(job.id)) ?? job,
    progressText: renderCancelled(by),
    answer: own ? 'Cancelled.' : `Cancelled the request of ${askerOf(deps, job)}.`,
  };
}
