/** What the first VM and the peer agent (peer-agent.ts) say to each other, and the pipe both ends of a relay use. */
import type { Socket } from 'node:net';

export interface PeerRunRequest {
  argv: string[];
  /** Merged over the agent's own environment. */
  env?: Record<string, string>;
  cwd?: string;
  /** Written to the program's stdin, which is then closed. */
  input?: string;
  /** SIGKILL after this long (then `signal` is 'SIGKILL' and `code` null). */
  timeoutMs?: number;
}

export interface PeerRunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

export interface RelayRequest {
  unixPath: string;
  host: string;
  port: number;
}

/** Pipes two sockets both ways; either one failing ends the other. */
export function pipeBothWays(a: Socket, b: Socket): void {
  a.pipe(b);
  b.pipe(a);
  a.on('error', () => b.destroy());
  b.on('error', () => a.destroy());
}
