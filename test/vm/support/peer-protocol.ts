/** What the first VM and the peer agent (peer-agent.ts) say to each other, and the pipe both ends of a relay use. */
import type { Socket } from 'node:net';
import { formatCommand, maskArgv, maskText } from '../../../lib/os/run.js';

export interface PeerRunRequest {
  argv: string[];
  /** Merged over the agent's own environment. */
  env?: Record<string, string>;
  cwd?: string;
  /** Written to the program's stdin, which is then closed. */
  input?: string;
  /** SIGKILL after this long (then `signal` is 'SIGKILL' and `code` null). */
  timeoutMs?: number;
  /** Masked in the agent's log and in errors (the tool's known secret flags are masked anyway). */
  secrets?: string[];
}

/** What the program did; its output as UTF-8 text. */
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

/** argv as one line for logs and errors, secrets masked. */
export function showArgv(argv: readonly string[], secrets: readonly string[] = []): string {
  return maskText(formatCommand(argv[0] ?? '', maskArgv(argv.slice(1), secrets)), secrets);
}
