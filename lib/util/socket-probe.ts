/**
 * Whether a server is bound and listening at a unix socket path (or an
 * abstract name, leading NUL): the kernel accepts a connection into the
 * listener's backlog even when the process cannot answer (stopped, busy), and
 * refuses it at once when nothing is bound. The probe connection is dropped.
 */
import net from 'node:net';

export function acceptsConnections(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect({ path });
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}
