// A driver executable called as a toolstack calls it: one XML-RPC methodCall
// on argv with the request struct xapi sends, one methodResponse on stdout.
import assert from 'node:assert/strict';
import { encodeMethodCall, parseMethodResponse, type MethodResponse } from '../../../lib/smapi/index.js';
import { run, type RunResult } from '../../helpers/sm.js';

export interface Call extends RunResult {
  response: MethodResponse;
}

/** `<driver> '<methodCall>'` with the request struct a toolstack sends. */
export async function call(driver: string, env: NodeJS.ProcessEnv, sr: string, verb: string, dc: Record<string, string>, extra: Record<string, unknown> = {}): Promise<Call> {
  const params = {
    host_ref: 'OpaqueRef:host-1',
    session_ref: 'OpaqueRef:session-1',
    command: verb,
    args: [],
    sr_uuid: sr,
    sr_ref: 'OpaqueRef:sr-1',
    subtask_of: `DummyRef:|task|${verb}`,
    ...extra,
    device_config: { SRmaster: 'true', ...dc },
  };
  const r = await run(driver, [encodeMethodCall(verb, [params])], { env, timeoutMs: 180_000 });
  assert.equal(r.signal, null, `${verb}: no signal`);
  assert.equal(r.code, 0, `${verb}: exit 0 (stderr: ${r.stderr})`);
  assert.ok(r.stdout.startsWith('<?xml') && r.stdout.trimEnd().endsWith('</methodResponse>'), `${verb}: stdout is one methodResponse: ${r.stdout}`);
  return { ...r, response: parseMethodResponse(r.stdout) };
}

export function ok(r: Call, verb: string): unknown {
  if (r.response.kind === 'fault') assert.fail(`${verb} failed: ${r.response.faultCode} ${r.response.faultString}\nstderr: ${r.stderr}`);
  return r.response.value;
}

export function fault(r: Call, code: number, verb: string): string {
  assert.equal(r.response.kind, 'fault', `${verb} must fail with ${code}`);
  const f = r.response as { faultCode: number; faultString: string };
  assert.equal(f.faultCode, code, `${verb}: fault ${f.faultCode} ${f.faultString}`);
  return f.faultString;
}
