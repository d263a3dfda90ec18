/**
 * Chooses, per call, whether the SM keeps a toolstack's database in step
 * (DESIGN item 9): only when a XenAPI endpoint listens at
 * `$SM_ROOT/var/lib/xcp/xapi` and the call carries a `session_ref` to use.
 * Otherwise the SM runs standalone (JSON-RPC toolstacks, tests), exactly as
 * without this module. SMlog says which, once per process and again whenever
 * it changes (a resident server outlives a toolstack restart).
 *
 * The client is loaded only when an endpoint exists: a driver is one process
 * per call, and a standalone one should not pay for it.
 */
import { getLog } from '../log/index.js';
import type { Request } from '../smapi/request.js';
import { listeningXapiSocket } from '../sr/xapi-socket.js';
import type { ToolstackDb } from '../sr/xapi-sync.js';

let lastSaid: string | undefined;

function say(line: string): void {
  if (line === lastSaid) return;
  lastSaid = line;
  getLog().info(line);
}

/** The toolstack's database for this call's SR, or undefined when the SM runs standalone. */
export async function toolstackDbFor(req: Request, srUuid: string): Promise<ToolstackDb | undefined> {
  const { socket, listening } = await listeningXapiSocket();
  if (!listening) {
    say(`XenAPI: standalone (no endpoint at ${socket})`);
    return undefined;
  }
  if (!req.session_ref) {
    say(`XenAPI: standalone (an endpoint listens at ${socket}, but the call carries no session_ref)`);
    return undefined;
  }
  say(`XenAPI: keeping the toolstack database in step through ${socket}`);
  const [{ XapiSession }, { ToolstackDb }] = await Promise.all([import('../xapi/client.js'), import('../sr/xapi-sync.js')]);
  const xapi = new XapiSession(socket, req.session_ref, req.subtask_of ? { subtaskOf: req.subtask_of } : {});
  return new ToolstackDb(xapi, srUuid, { ...(req.sr_ref ? { srRef: req.sr_ref } : {}), ...(req.host_ref ? { hostRef: req.host_ref } : {}) });
}

/**
 * For a verb that will keep the database in step: xapi's connection is opened
 * now, while the verb takes the SR lock and settles what a crash left, so its
 * first call does not wait for it. Nothing is sent; standalone, nothing happens.
 */
export async function connectAheadFor(req: Request): Promise<void> {
  if (!req.session_ref) return;
  const { socket, listening } = await listeningXapiSocket();
  if (listening) (await import('../xapi/transport.js')).connectAhead(socket);
}
