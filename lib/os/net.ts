/** Reachability of a storage server: one TCP connect with a short time limit. */
import { connect } from 'node:net';
import { checkHost, checkPort } from './validate.js';

export class UnreachableError extends Error {
  override readonly name = 'UnreachableError';
  constructor(
    readonly host: string,
    readonly port: number,
    /** "connection refused", "timed out after 5000 ms", "no route to host", ... */
    readonly reason: string,
  ) {
    super(`${host} is not reachable on TCP port ${port}: ${reason}`);
  }
}

const REASONS: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  EHOSTUNREACH: 'no route to host',
  ENETUNREACH: 'network unreachable',
  ENOTFOUND: 'unknown host name',
  EAI_AGAIN: 'host name lookup failed',
  ECONNRESET: 'connection reset',
};

/** Resolves when `host:port` accepts a TCP connection within `timeoutMs`; else UnreachableError. */
export function tcpProbe(host: string, port: number, timeoutMs = 5000): Promise<void> {
  const h = checkHost(host);
  const p = checkPort(port);
  return new Promise((resolve, reject) => {
    const sock = connect({ host: h, port: p });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new UnreachableError(h, p, `timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.destroy();
      resolve();
    });
    sock.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      sock.destroy();
      reject(new UnreachableError(h, p, REASONS[e.code ?? ''] ?? e.code ?? e.message));
    });
  });
}
