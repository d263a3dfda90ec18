/** Host-tier helpers for lib/os tests: a recording runner and the captured fixtures. */
import { readFileSync } from 'node:fs';
import type { RunOptions, ToolResult } from '../../lib/os/run.js';
import type { Runner } from '../../lib/os/tool.js';

export interface Call {
  cmd: string;
  args: string[];
  opts?: RunOptions;
}

/**
 * A runner that records every call instead of running it; `reply` may return
 * a result or throw (e.g. a ToolError carrying a real tool's stderr).
 */
export function recorder(reply?: (call: Call) => Partial<ToolResult> | undefined): { calls: Call[]; run: Runner; argv: () => string[][] } {
  const calls: Call[] = [];
  const run: Runner = async (cmd, args, opts) => {
    const call = { cmd, args: [...args], opts };
    calls.push(call);
    const r = reply?.(call);
    return { stdout: '', stderr: '', code: 0, ...r };
  };
  return { calls, run, argv: () => calls.map((c) => [c.cmd, ...c.args]) };
}

/** Real tool output captured in the VM by test/vm/capture-fixtures.sh. */
export function fixture(name: string): string {
  return readFileSync(new URL(`../../../test/os/fixtures/${name}`, import.meta.url), 'utf8');
}

export function fixtureBytes(name: string): Buffer {
  return readFileSync(new URL(`../../../test/os/fixtures/${name}`, import.meta.url));
}
