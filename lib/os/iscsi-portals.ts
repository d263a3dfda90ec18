/**
 * A target reachable at several addresses (device_config `target=a,b,c`): each
 * portal is tried in turn, discovery then login, until one works. Only the
 * winning portal is used afterwards (no multipath).
 */
import { discover, findSession, login, logout, type Chap, type Portal } from './iscsi.js';
import type { ToolContext } from './tool.js';

export interface PortalLogin {
  portal: Portal;
  /** The target IQNs on the portal that the caller asked for (all of them for `*`). */
  iqns: string[];
  /** The IQNs this call logged in to (the others had a session already): log out of these when done. */
  fresh: string[];
}

/** `wanted`: one IQN, which the portal must offer, or `*` for every target it offers. */
export async function loginFirstPortal(portals: readonly Portal[], wanted: string, chap?: Chap, ctx?: ToolContext): Promise<PortalLogin> {
  const failures: string[] = [];
  for (const portal of portals) {
    const where = `${portal.address}:${portal.port}`;
    let done: PortalLogin | undefined;
    try {
      const offered = [...new Set((await discover(portal.address, portal.port, ctx)).map((t) => t.iqn))];
      if (wanted !== '*' && !offered.includes(wanted)) {
        throw new Error(`target ${wanted} is not offered by ${where} (offered: ${offered.join(', ') || 'none'})`);
      }
      done = { portal, iqns: wanted === '*' ? offered : [wanted], fresh: [] };
      for (const iqn of done.iqns) {
        if (await findSession(iqn, portal.address, portal.port, ctx)) continue;
        await login(iqn, portal.address, portal.port, chap, ctx);
        done.fresh.push(iqn);
      }
      return done;
    } catch (e) {
      // Half logged in to this portal: undo it before trying the next one.
      if (done) await logoutPortal(done, ctx);
      failures.push(`${where}: ${(e as Error).message}`);
    }
  }
  throw new Error(failures.join('; ') || 'no target address');
}

/** Logs out of the sessions a loginFirstPortal call opened. */
export async function logoutPortal(logged: PortalLogin, ctx?: ToolContext): Promise<void> {
  for (const iqn of logged.fresh) await logout(iqn, logged.portal.address, logged.portal.port, ctx).catch(() => undefined);
}
