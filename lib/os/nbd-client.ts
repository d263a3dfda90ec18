/**
 * The kernel NBD client (Debian's nbd-client) in the form xapi's
 * nbd_client_manager uses: `-unix SOCK /dev/nbdN -timeout 90 -persist -name NAME`,
 * disconnect with `-disconnect`. Present only where the nbd module is loaded.
 */
import { existsSync, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { runnerOf, type ToolContext } from './tool.js';

/** `/dev/nbd0` exists and nbd-client is on PATH. */
export function kernelNbdAvailable(devRoot = '/dev'): boolean {
  if (!existsSync(join(devRoot, 'nbd0'))) return false;
  return (process.env.PATH ?? '').split(delimiter).some((d) => d && existsSync(join(d, 'nbd-client')));
}

/** Whether the kernel has a connection on /dev/nbdN (its pid file in sysfs). */
export function nbdDeviceBusy(n: number, sysRoot = '/sys'): boolean {
  try {
    return readFileSync(join(sysRoot, 'block', `nbd${n}`, 'pid'), 'utf8').trim() !== '';
  } catch {
    return false;
  }
}

/** The first /dev/nbdN that is neither connected nor in `taken`; undefined when none. */
export function freeNbdDevice(taken: ReadonlySet<string>, devRoot = '/dev', sysRoot = '/sys'): string | undefined {
  for (let n = 0; existsSync(join(devRoot, `nbd${n}`)); n++) {
    const dev = join(devRoot, `nbd${n}`);
    if (!taken.has(dev) && !nbdDeviceBusy(n, sysRoot)) return dev;
  }
  return undefined;
}

export async function connectNbd(socket: string, device: string, exportName: string, ctx?: ToolContext): Promise<void> {
  await runnerOf(ctx)('nbd-client', ['-unix', socket, device, '-timeout', '90', '-persist', '-name', exportName], { timeoutMs: ctx?.timeoutMs ?? 30_000 });
}

export async function disconnectNbd(device: string, ctx?: ToolContext): Promise<void> {
  await runnerOf(ctx)('nbd-client', ['-disconnect', device], { timeoutMs: ctx?.timeoutMs ?? 30_000 });
}
