/** What every lib/os wrapper accepts: the runner (tests substitute one to see argv) and a time limit. */
import { runTool } from './run.js';
import type { RunOptions, ToolResult } from './run.js';

export type Runner = (cmd: string, args: readonly string[], opts?: RunOptions) => Promise<ToolResult>;

export interface ToolContext {
  /** Defaults to runTool; tests pass a recorder. */
  run?: Runner;
  /** Per command; each wrapper has its own default. */
  timeoutMs?: number;
}

export function runnerOf(ctx: ToolContext | undefined): Runner {
  return ctx?.run ?? runTool;
}
