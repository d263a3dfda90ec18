/**
 * CBT logs as files: read, replaced whole and durably (written beside as
 * `<log>.tmp`, synced, renamed over, the directory synced), so a crash leaves
 * the old log or the new one, never a torn one. Logs are small (2 KiB per GiB
 * of disk), so every change rewrites the whole file.
 */
import { open, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { allSet, orInto } from './bitmap.js';
import { bitmapBytes, CbtLogError, decodeLog, encodeLog, newLog, type CbtLog } from './log-format.js';

export const TEMP_SUFFIX = '.tmp';

export async function readLog(path: string): Promise<CbtLog> {
  return decodeLog(await readFile(path), path);
}

export async function logExists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() === true;
}

export async function writeLog(path: string, log: CbtLog): Promise<void> {
  const tmp = path + TEMP_SUFFIX;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(encodeLog(log));
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  await syncDirOf(path);
}

/** A new, empty, consistent log for a disk of `size` bytes. */
export async function createLog(path: string, size: number, links: { parent?: string; child?: string } = {}): Promise<CbtLog> {
  const log = newLog(size, links);
  await writeLog(path, log);
  return log;
}

/** Reads, changes and writes back the log (the caller holds whatever lock keeps others out). */
export async function updateLog(path: string, change: (log: CbtLog) => void): Promise<CbtLog> {
  const log = await readLog(path);
  change(log);
  await writeLog(path, log);
  return log;
}

/** Grows the log to `size` bytes: new blocks unchanged (bits zero). A smaller size is no-op: logs never shrink. */
export function growTo(log: CbtLog, size: number): void {
  if (size <= log.size) return;
  const bitmap = Buffer.alloc(bitmapBytes(size));
  log.bitmap.copy(bitmap);
  log.bitmap = bitmap;
  log.size = size;
}

/**
 * A log left inconsistent (its writer died) settles to "every block changed",
 * then consistent: it never again reports fewer blocks than were written.
 */
export function settleInconsistent(log: CbtLog): boolean {
  if (log.consistent) return false;
  log.bitmap = allSet(log.size);
  log.consistent = true;
  return true;
}

/** `child |= parent`: what deleting the parent's snapshot keeps of its changes (cbt-util coalesce). */
export function mergeBitmap(parent: CbtLog, child: CbtLog): void {
  if (parent.consistent) orInto(child.bitmap, parent.bitmap);
  else child.bitmap = allSet(child.size);
}

export async function removeLog(path: string): Promise<void> {
  await rm(path + TEMP_SUFFIX, { force: true });
  await rm(path, { force: true });
  await syncDirOf(path);
}

async function syncDirOf(path: string): Promise<void> {
  const fh = await open(dirname(path), 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export { CbtLogError };
