/**
 * The host's role for an SR, from `device_config.SRmaster` (sent on every call):
 * "true" is the SR master; absent also means master (a host on its own).
 * Only the master changes the SR, runs journal recovery and the GC.
 */
import type { Request } from '../smapi/index.js';
import { SMError } from '../errors/sm-error.js';

export type PoolRole = 'master' | 'slave';

export function roleOf(req: Request): PoolRole {
  const flag = req.device_config?.SRmaster;
  return flag === undefined || flag === 'true' ? 'master' : 'slave';
}

/** LVMMaster (58) unless this host is the SR master. */
export function requireMaster(req: Request, verb: string): void {
  if (roleOf(req) === 'slave') throw new SMError('LVMMaster', `${verb} changes the SR: it runs on the pool master, this host is a slave`);
}
