/**
 * CBT logs at a path: a file (File, NFS SRs) or a block device (an LV on
 * LVM SRs). Logs are small (2 KiB per GiB of disk), so every change rewrites
 * the whole log.
 *
 * A file is replaced whole and durably (written beside as `<log>.tmp`,
 * synced, renamed over, the directory synced), so a crash leaves the old log
 * or the new one, never a torn one. A device cannot be renamed over: it is
 * rewritten in place, the bitmap past the first sector first, synced, then
 * the first sector (header and the bitmap's start) in one sector write,
 * synced. Torn by a crash, such a log keeps the header it had before, and
 * every rewrite the SR makes is journaled or idempotent, so it is redone.
 */
import { open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { FileIO } from '../vhd/io.js';
import { allSet, orInto } from './bitmap.js';
import { bitmapBytes, CBT_HEADER_SIZE, CbtLogError, decodeLog, encodeLog, newLog, type CbtLog } from './log-format.js';

export const TEMP_SUFFIX = '.tmp';
/** What a device writes at once: the header and the bitmap's start land together. */
const SECTOR = 512;

/** Reads the header, then exactly the bitmap it announces (a device is larger than its log). */
export async function readLog(path: string): Promise<CbtLog> {
  const fh = await open(path, 'r');
  try {
    const header = Buffer.alloc(CBT_HEADER_SIZE);
    const got = await readFully(fh, header);
    const size = got < CBT_HEADER_SIZE ? -1 : header.readBigUInt64LE(40);
    // Too short or a size out of range: decodeLog names the fault.
    if (size < 0 || size > BigInt(Number.MAX_SAFE_INTEGER)) return decodeLog(header.subarray(0, got), path);
    const whole = Buffer.alloc(CBT_HEADER_SIZE + bitmapBytes(Number(size)));
    return decodeLog(whole.subarray(0, await readFully(fh, whole)), path);
  } finally {
    await fh.close();
  }
}

async function readFully(fh: FileHandle, buf: Buffer): Promise<number> {
  let at = 0;
  while (at < buf.length) {
    const { bytesRead } = await fh.read(buf, at, buf.length - at, at);
    if (bytesRead === 0) break;
    at += bytesRead;
  }
  return at;
}

export async function logExists(path: string): Promise<boolean> {
  const st = await stat(path).catch(() => undefined);
  return st?.isFile() === true || st?.isBlockDevice() === true;
}

export async function writeLog(path: string, log: CbtLog): Promise<void> {
  if ((await stat(path).catch(() => undefined))?.isBlockDevice()) return writeLogInPlace(path, log);
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

/** A device holding a log: rewritten in place, the first sector last (see the top of this file). */
async function writeLogInPlace(path: string, log: CbtLog): Promise<void> {
  const bytes = encodeLog(log);
  const io = await FileIO.open(path, true);
  try {
    const room = await io.size();
    if (bytes.length > room) throw new CbtLogError(`${path}: a log of ${bytes.length} bytes does not fit the ${room} bytes of the device`);
    if (bytes.length > SECTOR) {
      await io.write(bytes.subarray(SECTOR), SECTOR);
      await io.sync();
    }
    await io.write(bytes.subarray(0, SECTOR), 0);
    await io.sync();
  } finally {
    await io.close();
  }
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
