import type { JobPayload } from '../jobs.ts';

/**
 * The order both queues start jobs in: fair across communities, and user requests before indexing.
 *
 * Fairness is start-time fair queuing (Goyal, Vin and Cheng, "Start-time Fair Queuing", SIGCOMM 1996)
 * with equal weights and unit-cost jobs. Each job gets a tag when it is added:
 *   tag = max(V, F[community]),  then F[community] = tag + 1
 * where V, the lane's virtual time, is the largest tag started so far and F is a community's finish tag
 * (0 for a community with nothing before). Jobs start in tag order, first added first among equal tags.
 * So a community's own jobs keep their order, busy communities take turns, and a community arriving
 * while another floods the queue gets tag V: its first job starts next.
 *
 * Lanes (#13 §4): index jobs are tagged in a lane of their own, placed after every user request, so
 * indexing a backlog never delays anyone's request; they run when no request waits.
 *
 * The tags become BullMQ priorities (lower first, 1 to 2^21 - 1), half the range per lane. Whenever a
 * job is added to a lane with nothing waiting, the lane's clock is shifted back by V (V becomes 0, each
 * finish tag F - V, those at or below 0 forgotten), which changes no order and keeps tags small; a lane
 * backlogged without a break for 2^20 turns orders its later jobs first come, first served.
 */

export type Lane = 'user' | 'index';

export function laneOf(payload: JobPayload): Lane {
  return payload.kind === 'index' ? 'index' : 'user';
}

/** The community a job is shared fairly within. */
export function communityKey(payload: JobPayload): string {
  return `${payload.community.platform}:${payload.community.externalId}`;
}

const LANE_SPAN = 2 ** 20;
const LANE_BASE: Record<Lane, number> = { user: 0, index: LANE_SPAN };
const MAX_TAG = LANE_SPAN - 2;
/** BullMQ's prioritized set scores a job priority * 2^32 + its add counter. */
const SCORE_UNIT = 2 ** 32;

/** The queue priority of a tag in a lane (lower starts first; 0 would mean none). */
export function priorityOf(lane: Lane, tag: number): number {
  return LANE_BASE[lane] + 1 + Math.min(tag, MAX_TAG);
}

/** The tag a priority was made from, or null for a job added without one. */
export function tagOf(lane: Lane, priority: number): number | null {
  const tag = priority - LANE_BASE[lane] - 1;
  return tag >= 0 && tag <= MAX_TAG ? tag : null;
}

/** The range of BullMQ prioritized-set scores of a lane's jobs, as ZCOUNT bounds. */
export function laneScores(lane: Lane): [string, string] {
  return [String((LANE_BASE[lane] + 1) * SCORE_UNIT), `(${(LANE_BASE[lane] + LANE_SPAN) * SCORE_UNIT}`];
}

/**
 * The Redis form of FairClock.tag (bullmq.ts). KEYS: the job's hash, the lane's clock hash, BullMQ's
 * prioritized set; ARGV: the community, the lane's score bounds. Returns -1 when the job already exists
 * (so a repeated add takes no turn from its community). The clock hash holds V under `~v`, the largest
 * tag given under `~max` (tags above it were given before a shift), and each community's finish tag.
 */
export const TAG_SCRIPT = `
local v = tonumber(redis.call('HGET', KEYS[2], '~v') or '0')
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if redis.call('ZCOUNT', KEYS[3], ARGV[2], ARGV[3]) == 0 then
  local all = redis.call('HGETALL', KEYS[2])
  redis.call('DEL', KEYS[2])
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 1) ~= '~' and tonumber(all[i + 1]) > v then
      redis.call('HSET', KEYS[2], all[i], tonumber(all[i + 1]) - v)
    end
  end
  v = 0
end
local tag = math.max(v, tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0'))
redis.call('HSET', KEYS[2], ARGV[1], tag + 1)
if tag > tonumber(redis.call('HGET', KEYS[2], '~max') or '0') then redis.call('HSET', KEYS[2], '~max', tag) end
return tag`;

/**
 * The Redis form of FairClock.started, run when a worker takes a job; it also answers whether the job was
 * cancelled meanwhile, in the same round trip. KEYS: the job's cancel marker, the lane's clock hash;
 * ARGV: the job's tag (-1 for none).
 */
export const START_SCRIPT = `
local tag = tonumber(ARGV[1])
local v = tonumber(redis.call('HGET', KEYS[2], '~v') or '0')
if tag > v and tag <= tonumber(redis.call('HGET', KEYS[2], '~max') or '0') then
  redis.call('HSET', KEYS[2], '~v', tag)
end
return redis.call('EXISTS', KEYS[1])`;

/** The in-process form of the clock, one per lane; the same arithmetic as the scripts above. */
export class FairClock {
  private v = 0;
  private max = 0;
  private finish = new Map<string, number>();

  /** The tag of a job of this community; `idle` when nothing of the lane waits. */
  tag(community: string, idle: boolean): number {
    if (idle) {
      const shifted = new Map<string, number>();
      for (const [key, f] of this.finish) if (f > this.v) shifted.set(key, f - this.v);
      this.finish = shifted;
      this.v = 0;
      this.max = 0;
    }
    const tag = Math.max(this.v, this.finish.get(community) ?? 0);
    this.finish.set(community, tag + 1);
    this.max = Math.max(this.max, tag);
    return tag;
  }

  started(tag: number): void {
    if (tag > this.v && tag <= this.max) this.v = tag;
  }
}
