// What a driver executable and its resident server agree on when the executable
// hands a call over (hand-off.ts, serve.ts). Node's own modules only: the
// executable loads this before, and instead of, the driver.
import { statSync } from 'node:fs';
import { join } from 'node:path';

/** The JSON-RPC method carrying one raw XML-RPC methodCall. */
export const FORWARD_METHOD = 'sm.forward_xmlrpc';
/** The server's "not here" answer: nothing was done, the caller answers the call itself. */
export const NOT_SERVED = -32001;

export interface ForwardParams {
  xml: string;
  /** The settings the call would run with in-process (see callSettings). */
  settings: Record<string, string>;
  /** buildIdOf() the driver bundle the caller would load. */
  build: string;
}

/** Where the server of driver `name` (FileSR, NFSSR, LVMoISCSISR) listens: `$SM_ROOT/run/sm/serve/<name>.sock`. */
export function servedSocketPath(name: string): string {
  return join(process.env.SM_ROOT || '/', 'run', 'sm', 'serve', `${name}.sock`);
}

/** The file and its version: a server of another build must not answer for this one. */
export function buildIdOf(path: string): string {
  const st = statSync(path);
  return `${path}:${st.size}:${st.mtimeMs}`;
}

/**
 * The environment a call's behaviour depends on: every SM_ setting, the tool
 * search path and the time zone of the log. A server answers only calls whose
 * settings equal its own, so a call behaves the same either way.
 */
export function callSettings(env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const key of Object.keys(env).sort()) {
    if ((key.startsWith('SM_') || key === 'PATH' || key === 'TZ') && env[key] !== undefined) out[key] = env[key]!;
  }
  return out;
}

export function sameSettings(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => b[k] === a[k]);
}
