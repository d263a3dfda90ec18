/**
 * The kernel NBD client (Debian's nbd-client) in the form xapi's
 * nbd_client_manager uses: `-unix SOCK /dev/nbdN -timeout 90 -persist -name NAME`,
 * disconnect with `-disconnect`. Present only where the nbd module is loaded.
 *
 * Seen on Debian 12's kernel with nbd-client 3.24: the device is set up over
 * netlink and nbd-client exits once the kernel holds the connection (no
 * process stays; `-persist` has no effect there). A connected device has
 * `/sys/block/nbdN/pid`; it goes when the device is disconnected and its last
 * opener closed it. `-disconnect` of a device that is not connected exits 0.
 */
import { existsSync, readFileSync } from 'node:fs';
import { realpath } from 'node:fs/promises';
import { join } from 'node:path';
import { toolSearchPath } from './run.js';
import { runnerOf, type ToolContext } from './tool.js';

/** A unix socket address holds at most this many bytes of path (sun_path less its NUL). */
const MAX_SOCKET_PATH = 107;

/**
 * Why /dev/nbdN cannot be used here, or undefined when it can: `/dev/nbd0`
 * exists (the module is loaded) and nbd-client is where tools are looked up.
 */
export function kernelNbdMissing(devRoot = '/dev', toolDirs = toolSearchPath()): string | undefined {
  if (!existsSync(join(devRoot, 'nbd0'))) return `no ${join(devRoot, 'nbd0')} (nbd module not loaded)`;
  if (!toolDirs.some((d) => existsSync(join(d, 'nbd-client')))) return 'nbd-client is not installed';
  return undefined;
}

/** Whether the kernel has a connection on /dev/nbdN (its pid file in sysfs). */
export function nbdDeviceBusy(n: number, sysRoot = '/sys'): boolean {
  try {
    return readFileSync(join(sysRoot, 'block', `nbd${n}`, 'pid'), 'utf8').trim() !== '';
  } catch {
    return false;
  }
}

/** N of `/dev/nbdN`, or undefined for any other path. */
export function nbdIndex(device: string): number | undefined {
  const m = /^\/dev\/nbd(\d+)$/.exec(device);
  return m ? Number(m[1]) : undefined;
}

/** Whether the kernel has a connection on this /dev/nbdN. */
export function nbdConnected(device: string, sysRoot = '/sys'): boolean {
  const n = nbdIndex(device);
  return n !== undefined && nbdDeviceBusy(n, sysRoot);
}

/** The first /dev/nbdN that is neither connected nor in `taken`; undefined when none. */
export function freeNbdDevice(taken: ReadonlySet<string>, devRoot = '/dev', sysRoot = '/sys'): string | undefined {
  for (let n = 0; existsSync(join(devRoot, `nbd${n}`)); n++) {
    const dev = join(devRoot, `nbd${n}`);
    if (!taken.has(dev) && !nbdDeviceBusy(n, sysRoot)) return dev;
  }
  return undefined;
}

/**
 * The path nbd-client is given: the socket path itself where it fits in a
 * socket address (on a host: `/run/blktap-control/nbd/<sr>/<vdi>`, 97 bytes),
 * else what the link leads to (a long SM_ROOT): nbd-client refuses a longer
 * one ("UNIX socket path too long").
 */
export async function connectablePath(socket: string): Promise<string> {
  return Buffer.byteLength(socket) <= MAX_SOCKET_PATH ? socket : realpath(socket);
}

export async function connectNbd(socket: string, device: string, exportName: string, ctx?: ToolContext): Promise<void> {
  const path = await connectablePath(socket);
  await runnerOf(ctx)('nbd-client', ['-unix', path, device, '-timeout', '90', '-persist', '-name', exportName], { timeoutMs: ctx?.timeoutMs ?? 30_000 });
}

export async function disconnectNbd(device: string, ctx?: ToolContext): Promise<void> {
  await runnerOf(ctx)('nbd-client', ['-disconnect', device], { timeoutMs: ctx?.timeoutMs ?? 30_000 });
}

/** Polls until the kernel has let go of the device (no connection left); false after `timeoutMs`. */
export async function waitNbdReleased(device: string, timeoutMs = 10_000, sysRoot = '/sys'): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (nbdConnected(device, sysRoot)) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}
