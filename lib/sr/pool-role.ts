/**
 * The host's role for an SR, from `device_config.SRmaster` (sent on every call):
 * "true" is the SR master; absent also means master (a host on its own).
 * Only the master changes the SR, runs journal recovery and the GC.
 */
import { SMError } from '../errors/sm-error.js';

export type PoolRole = 'master' | 'slave';

/** The part of a call that says the role (any request model carries it). */
export interface RoleOfCall {
  device_config?: Record<string, string>;
}

export function roleOf(req: RoleOfCall): PoolRole {
  const flag = req.device_config?.SRmaster;
  return flag === undefined || flag === 'true' ? 'master' : 'slave';
}

/** LVMMaster (58) unless this host is the SR master. */
export function requireMaster(req: RoleOfCall, verb: string): void {
  if (roleOf(req) === 'slave') throw new SMError('LVMMaster', `${verb} changes the SR: it runs on the pool master, this host is a slave`);
}
