/** xapi's socket when an endpoint listens there (`$SM_ROOT/var/lib/xcp/xapi`); the drivers and the GC ask the same. */
import { stat } from 'node:fs/promises';
import { xapiSocketPath } from './paths.js';

export async function listeningXapiSocket(): Promise<{ socket: string; listening: boolean }> {
  const socket = xapiSocketPath();
  const listening = await stat(socket).then((s) => s.isSocket(), () => false);
  return { socket, listening };
}
