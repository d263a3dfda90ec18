// Shared test helpers: a private SM_ROOT per test process, and Python's
// xmlrpc.client as the byte-for-byte reference.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** A fresh SM_ROOT for this test process, so SMlog never lands in /var/log. */
export function useTempSmRoot(): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'sm-test-'));
  process.env.SM_ROOT = root;
  return root;
}

export const REQUEST_BASE = {
  host_ref: 'OpaqueRef:host',
  session_ref: 'OpaqueRef:session-secret',
  args: [] as string[],
  device_config: { SRmaster: 'true', location: '/srv/sr1' },
};

// Python side: JSON in, the reference outputs out. Tagged objects stand for
// the types JSON lacks: {"$b64": "..."} bytes, {"$dt": "..."} DateTime,
// {"$float": x} a float even when integral.
const PYTHON = String.raw`
import json, sys, base64, xmlrpc.client as x
def conv(v):
    if isinstance(v, dict):
        if '$b64' in v: return x.Binary(base64.b64decode(v['$b64']))
        if '$dt' in v: return x.DateTime(v['$dt'])
        if '$float' in v: return float(v['$float'])
        return {k: conv(i) for k, i in v.items()}
    if isinstance(v, list): return [conv(i) for i in v]
    return v
out = []
for case in json.loads(sys.stdin.read()):
    kind = case['kind']
    if kind == 'response':
        out.append(x.dumps((conv(case['value']),), methodresponse=True, allow_none=True))
    elif kind == 'fault':
        out.append(x.dumps(x.Fault(case['code'], case['string']), methodresponse=True, allow_none=True))
    elif kind == 'call':
        out.append(x.dumps(tuple(conv(p) for p in case['params']), case['method'], allow_none=True))
    elif kind == 'float':
        out.append(repr(float(case['value'])))
    elif kind == 'loads':
        params, method = x.loads(case['xml'], use_builtin_types=True)
        out.append(json.dumps({'method': method, 'params': params}, default=lambda o: base64.b64encode(o).decode() if isinstance(o, bytes) else str(o)))
sys.stdout.write(json.dumps(out))
`;

export type PythonCase =
  | { kind: 'response'; value: unknown }
  | { kind: 'fault'; code: number; string: string }
  | { kind: 'call'; method: string; params: unknown[] }
  | { kind: 'float'; value: number | string }
  | { kind: 'loads'; xml: string };

/** Runs all cases through one python3 process; returns its outputs in order. */
export function python(cases: PythonCase[]): string[] {
  const out = execFileSync('python3', ['-c', PYTHON], { input: JSON.stringify(cases), encoding: 'utf8' });
  return JSON.parse(out) as string[];
}
