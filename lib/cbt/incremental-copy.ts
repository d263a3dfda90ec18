/**
 * Incremental backup over NBD: reads only the changed ranges of a served
 * snapshot and writes them at the same offsets of a copy (a raw file, or a
 * VHD chain's leaf), so a copy of the previous snapshot becomes a copy of
 * this one. With every block listed it is the full copy the first backup needs.
 */
import { open } from 'node:fs/promises';
import { NbdClient } from '../nbd/client.js';
import { VhdChain } from '../vhd/chain.js';

/** Bytes per READ: ranges longer than this are split. */
const PIECE = 4 * 1024 * 1024;
/** READs in flight at once. */
const IN_FLIGHT = 16;

export interface CopyTarget {
  write(data: Buffer, offset: number): Promise<void>;
  close(): Promise<void>;
}

export interface CopyReport {
  /** Bytes read over NBD (and written to the copy). */
  bytesRead: number;
  /** The export's size. */
  size: number;
  ranges: number;
  ms: number;
}

/** A raw file, grown to `size` (a full copy starts from nothing), synced at close. */
export async function rawTarget(path: string, size: number): Promise<CopyTarget> {
  const fh = await open(path, 'a+').then(async (h) => {
    await h.close();
    return open(path, 'r+');
  });
  if ((await fh.stat()).size < size) await fh.truncate(size);
  return {
    async write(data, offset) {
      await fh.write(data, 0, data.length, offset);
    },
    async close() {
      await fh.sync();
      await fh.close();
    },
  };
}

/** The leaf of an existing VHD chain (its virtual size must cover the snapshot's). */
export async function vhdTarget(path: string): Promise<CopyTarget> {
  const chain = await VhdChain.open(path, { writable: true, durable: true });
  // One write at a time: two writes into one unallocated VHD block would each allocate it.
  let queue: Promise<void> = Promise.resolve();
  return {
    write(data, offset) {
      const done = queue.then(() => chain.write(data, offset));
      queue = done.catch(() => undefined);
      return done;
    },
    async close() {
      await chain.sync();
      await chain.close();
    },
  };
}

export async function copyRanges(socket: string, exportName: string, ranges: readonly { offset: number; length: number }[], target: CopyTarget): Promise<CopyReport> {
  const started = Date.now();
  const client = await NbdClient.connect(socket, exportName);
  const pieces: { offset: number; length: number }[] = [];
  for (const r of ranges) {
    if (r.offset + r.length > client.size) throw new Error(`range ${r.offset}+${r.length} is past the export's ${client.size} bytes`);
    for (let at = r.offset; at < r.offset + r.length; at += PIECE) pieces.push({ offset: at, length: Math.min(PIECE, r.offset + r.length - at) });
  }
  try {
    let next = 0;
    const worker = async () => {
      while (next < pieces.length) {
        const p = pieces[next++];
        await target.write(await client.read(p.offset, p.length), p.offset);
      }
    };
    // Every worker finishes before the target closes; the first failure is the one reported.
    const failed = (await Promise.allSettled(Array.from({ length: IN_FLIGHT }, worker))).find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  } finally {
    await client.close().catch(() => undefined);
    await target.close();
  }
  return { bytesRead: client.bytesRead, size: client.size, ranges: ranges.length, ms: Date.now() - started };
}
