/**
 * The collector's side of keeping xapi's database in step (DESIGN item 9):
 * it runs outside any toolstack call, so it logs in as root over the socket
 * itself (xapi takes a unix-socket caller as root), as the established
 * collector does, and logs out at the end. Standalone when no endpoint listens.
 *
 * What the database hears is best effort here: the images changed already and
 * stay right; a record xapi could not be told about is put right by the next
 * sr_scan (it forgets gone images and rewrites a stale `vhd-parent`).
 */
import type { SMLog } from '../lib/log/index.js';
import { hostId } from '../lib/sr/host-id.js';
import { listeningXapiSocket } from '../lib/sr/xapi-socket.js';
import type { ToolstackDb } from '../lib/sr/xapi-sync.js';
import type { GcContext } from './context.js';

export interface GcToolstack {
  db: ToolstackDb;
  close(): Promise<void>;
}

export async function openGcToolstack(sr: string, log: SMLog): Promise<GcToolstack | undefined> {
  const { socket, listening } = await listeningXapiSocket();
  if (!listening) {
    log.info(`XenAPI: standalone (no endpoint at ${socket})`);
    return undefined;
  }
  const [{ loginAsRoot }, { ToolstackDb }] = await Promise.all([import('../lib/xapi/client.js'), import('../lib/sr/xapi-sync.js')]);
  try {
    const session = await loginAsRoot(socket);
    log.info(`XenAPI: keeping the toolstack database in step through ${socket}`);
    // This host's ref: the pause protocol asks the other hosts' plugins, and pauses this host's datapath itself.
    const hostRef = await session.hostByUuid(hostId()).catch((err: Error) => {
      log.warn(`XenAPI: this host (${hostId()}) is not known to the toolstack (${err.message}): its datapath is asked through the plugin too`);
      return undefined;
    });
    return {
      db: new ToolstackDb(session, sr, hostRef ? { hostRef } : {}),
      close: () => session.logout().catch((err: Error) => log.warn(`XenAPI: logout failed: ${err.message}`)),
    };
  } catch (err) {
    log.warn(`XenAPI: cannot log in at ${socket} (${(err as Error).message}): the database hears of this run at the next sr_scan`);
    return undefined;
  }
}

/** Tells the database what a step did; a failure is logged, never fails the step (see above). */
export async function tellToolstack(ctx: GcContext, what: string, fn: (db: ToolstackDb) => Promise<void>): Promise<void> {
  if (!ctx.toolstack) return;
  try {
    await fn(ctx.toolstack);
  } catch (err) {
    ctx.log.warn(`XenAPI: ${what} not recorded (${(err as Error).message}): the next sr_scan puts it right`);
  }
}
