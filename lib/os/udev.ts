/** Waiting for the device nodes and links that udev (or the kernel) makes. */
import { existsSync } from 'node:fs';
import { runnerOf } from './tool.js';
import type { ToolContext } from './tool.js';

/** Whether systemd-udevd runs (its control socket exists). */
export const udevRunning = (): boolean => existsSync('/run/udev/control');

/** `udevadm settle`: waits for queued udev events; a no-op when udev does not run. */
export async function udevSettle(timeoutSec = 30, ctx?: ToolContext): Promise<void> {
  if (!udevRunning() && !ctx?.run) return;
  await runnerOf(ctx)('udevadm', ['settle', `--timeout=${timeoutSec}`], { timeoutMs: (timeoutSec + 5) * 1000 });
}

/** Polls until `path` exists (true) or `timeoutMs` passes (false). */
export async function waitForPath(path: string, timeoutMs = 10_000, intervalMs = 100): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (existsSync(path)) return true;
    if (Date.now() >= end) return false;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Polls `probe` until it returns a value (not undefined) or `timeoutMs` passes. */
export async function waitFor<T>(probe: () => Promise<T | undefined>, timeoutMs = 10_000, intervalMs = 100): Promise<T | undefined> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() >= end) return undefined;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
