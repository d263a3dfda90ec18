// Shared pieces of the hostile-input tests: a canary file holding a unique
// secret outside the SR (anything that reads it could leak it), reading exactly
// one XML-RPC fault off a driver's stdout, and running a list of argv cases
// against a driver with the bounds and the figures.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { parseMethodResponse } from '../../lib/smapi/index.js';
import { mapLimit, readSmlog, run, type RunResult, type SmEnv } from './sm.js';
import { within, type Tally } from './tally.js';

export interface Canary {
  path: string;
  secret: string;
}

/** A file outside the SR whose content must never show up anywhere. */
export function plantCanary(ctx: SmEnv, name = 'canary-secret.txt'): Canary {
  const secret = `CANARY-${randomUUID()}`;
  const file = path.join(ctx.base, name);
  fs.writeFileSync(file, `${secret}\n`);
  return { path: file, secret };
}

/** The one fault on stdout, or why the output is not exactly one fault response. */
export function onlyFault(r: RunResult): { code: number; faultString: string } | string {
  if (r.signal) return `killed by ${r.signal}`;
  if (r.code !== 0) return `exit code ${r.code}: ${r.stderr.slice(-400)}`;
  if (r.stdout.match(/<methodResponse>/g)?.length !== 1) return `not exactly one methodResponse: ${JSON.stringify(r.stdout.slice(0, 300))}`;
  try {
    const response = parseMethodResponse(r.stdout);
    if (response.kind !== 'fault') return `no fault: ${JSON.stringify(response.value).slice(0, 200)}`;
    return { code: response.faultCode, faultString: response.faultString };
  } catch (err) {
    return `not a methodResponse: ${(err as Error).message}`;
  }
}

export interface ArgvCase {
  what: string;
  /** argv of the driver (one methodCall) or of a wrapper that starts it. */
  argv: string[];
  codes: number[];
  /** Starts something other than the driver itself (e.g. xargs with raw bytes). */
  file?: string;
}

/**
 * Runs each case (two at a time), asserting: exactly one fault on stdout with
 * one of the expected codes, exit 0, time and peak RSS under the bounds, and
 * none of `secrets` in stdout or stderr. Returns the fault strings.
 */
export async function expectArgvFaults(t: ExecutionContext, ctx: SmEnv, driver: string, cases: ArgvCase[], tally: Tally, secrets: string[] = [], env = ctx.env): Promise<string[]> {
  return mapLimit(cases, 2, async (c) => {
    const r = await run(c.file ?? driver, c.argv, { env, measure: true, timeoutMs: 30_000 });
    const fault = onlyFault(r);
    const right = typeof fault !== 'string' && c.codes.includes(fault.code);
    if (!right) t.log(`${c.what}: ${typeof fault === 'string' ? fault : `fault ${fault.code} (${fault.faultString.slice(0, 300)})`}`);
    t.true(right, `${c.what}: ${typeof fault === 'string' ? fault : `fault ${fault.code} (${fault.faultString.slice(0, 300)})`}, expected ${c.codes.join(' or ')}`);
    for (const s of secrets) {
      t.false(r.stdout.includes(s) || r.stderr.includes(s), `${c.what}: ${s} not in stdout/stderr`);
    }
    within(t, tally, c.what, right, r);
    return typeof fault === 'string' ? fault : fault.faultString;
  });
}

/** No secret in SMlog; counts an escape on the tally for each that is. */
export function assertNotInLog(t: ExecutionContext, ctx: SmEnv, secrets: string[], tally?: Tally): void {
  const log = readSmlog(ctx);
  for (const s of secrets) {
    const leaked = log.includes(s);
    if (leaked && tally) tally.escapes++;
    t.false(leaked, `SMlog holds no ${s}`);
  }
}
