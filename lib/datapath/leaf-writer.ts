/**
 * Concurrent writes into the leaf of a VHD chain, in blktap's order:
 *
 * - A new block is written whole (sector bitmap, zeros, the write's sectors,
 *   zeros: one appended write, the footer moved past it first) before the
 *   in-memory BAT points at it; one allocation at a time per image. Writes to a
 *   block being allocated wait for that allocation, then write in place.
 * - The on-disk BAT entry of a new block is written by the next flush, after an
 *   fsync has made the block durable, then fsync again: the BAT never points at
 *   a block that is not on disk, even across a power loss. A write acknowledged
 *   but not flushed may be lost by a crash, as NBD allows.
 * - In an allocated block the data goes first; bitmap bits follow once it is
 *   written (one bitmap writer per block), so readers see a bit only over data.
 * - Writes overlapping in sectors exclude each other (partial sectors are
 *   read-modify-write); writes to other sectors run in parallel.
 */
import { faultPoint } from '../sr/fault.js';
import { allSet, forEachSetRun, setBits } from '../vhd/format/bitmap.js';
import { SECTOR } from '../vhd/format/constants.js';
import type { VhdChain, VhdImage } from '../vhd/index.js';
import { Mutex, RangeLock } from './locks.js';

export class LeafWriter {
  /** Sector ranges of the virtual disk with a write in progress. */
  private readonly ranges = new RangeLock();
  /** One allocation at a time: each one moves the end of the file. */
  private readonly allocation = new Mutex();
  private readonly allocating = new Map<number, Promise<void>>();
  /** One bitmap writer per block (a later bitmap must never be overtaken by an older one). */
  private readonly bitmapWriters = new Map<number, { mutex: Mutex; users: number }>();
  /** Blocks whose BAT entry is set in memory but not yet on disk. */
  private readonly unpersisted = new Set<number>();
  /** Blocks that became fully allocated: their batmap bits are set at close. */
  private readonly becameFull = new Set<number>();
  /** Read-only zeros around a new block's data (never written into). */
  private readonly zeros: Buffer;
  /** Called once no block is being allocated (see allocationsDone). */
  private allocationWaiters: (() => void)[] = [];
  private flushTail: Promise<void> = Promise.resolve();
  private queuedFlush: Promise<void> | undefined;

  constructor(private readonly chain: VhdChain) {
    this.zeros = Buffer.alloc(chain.leaf.blockSize);
  }

  private get leaf(): VhdImage {
    return this.chain.leaf;
  }

  /** Zeros to write from, at most one block long; callers must not modify it. */
  get zeroBlock(): Buffer {
    return this.zeros;
  }

  /** Whether block `block` was allocated since the last flush: its BAT entry is in memory only. */
  awaitsBat(block: number): boolean {
    return this.unpersisted.has(block);
  }

  /** Whether some block allocated since the last flush still lacks its on-disk BAT entry. */
  get batPending(): boolean {
    return this.unpersisted.size > 0;
  }

  /** Resolves once no block is being allocated (at once when none is), or after `ms` at most. */
  allocationsDone(ms: number): Promise<void> {
    if (this.allocating.size === 0 || ms <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.allocationWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Writes `data` at virtual byte `offset` (any alignment; the caller checked the range). */
  async write(data: Buffer, offset: number): Promise<void> {
    const blockSize = this.leaf.blockSize;
    const jobs: Promise<void>[] = [];
    for (let pos = offset; pos < offset + data.length; ) {
      const block = Math.floor(pos / blockSize);
      const end = Math.min(offset + data.length, (block + 1) * blockSize);
      jobs.push(this.writeInBlock(block, pos - block * blockSize, data.subarray(pos - offset, end - offset)));
      pos = end;
    }
    await Promise.all(jobs);
  }

  private async writeInBlock(block: number, byteInBlock: number, data: Buffer): Promise<void> {
    const spb = this.leaf.sectorsPerBlock;
    const s0 = Math.floor(byteInBlock / SECTOR);
    const s1 = Math.ceil((byteInBlock + data.length) / SECTOR);
    const release = await this.ranges.acquire(block * spb + s0, block * spb + s1);
    try {
      while (!this.leaf.hasBlock(block)) {
        const pending = this.allocating.get(block);
        if (pending) {
          await pending.catch(() => undefined); // its writer reports the failure; we retry
          continue;
        }
        const allocation = this.allocate(block, s0, s1, byteInBlock, data);
        this.allocating.set(block, allocation);
        try {
          await allocation;
        } finally {
          this.allocating.delete(block);
          if (this.allocating.size === 0) for (const done of this.allocationWaiters.splice(0)) done();
        }
        return;
      }
      const pieces = await this.sectorPieces(block, s0, s1, byteInBlock, data);
      await this.leaf.io.write(pieces, this.leaf.dataOffset(block) + s0 * SECTOR);
      if (!this.leaf.isBlockFull(block)) await this.markSectors(block, s0, s1);
    } finally {
      release();
    }
  }

  private async allocate(block: number, s0: number, s1: number, byteInBlock: number, data: Buffer): Promise<void> {
    const leaf = this.leaf;
    const spb = leaf.sectorsPerBlock;
    // Edge sectors come from the parents: read them before taking the allocation lock.
    const pieces = await this.sectorPieces(block, s0, s1, byteInBlock, data);
    await this.allocation.run(async () => {
      const bitmap = Buffer.alloc(leaf.bitmapBytes);
      setBits(bitmap, s0, s1);
      const body = [this.zeros.subarray(0, s0 * SECTOR), ...pieces, this.zeros.subarray(0, (spb - s1) * SECTOR)];
      faultPoint('datapath-alloc-start');
      await leaf.appendBlockPieces([{ index: block, bitmap, data: body.filter((b) => b.length > 0) }]);
      faultPoint('datapath-alloc-appended');
      this.unpersisted.add(block);
      if (s0 === 0 && s1 === spb) this.becameFull.add(block);
    });
  }

  /**
   * Whole sectors [s0, s1) carrying `data` at `byteInBlock`: the caller's buffer
   * itself when aligned, else one-sector heads and tails merged with what the
   * chain holds there (the range lock keeps those sectors still meanwhile).
   */
  private async sectorPieces(block: number, s0: number, s1: number, byteInBlock: number, data: Buffer): Promise<Buffer[]> {
    const head = byteInBlock - s0 * SECTOR;
    const tail = s1 * SECTOR - (byteInBlock + data.length);
    if (head === 0 && tail === 0) return [data];
    const blockStart = block * this.leaf.blockSize;
    const edge = async (sector: number): Promise<Buffer> => {
      const buf = Buffer.alloc(SECTOR);
      await this.chain.read(buf, blockStart + sector * SECTOR);
      return buf;
    };
    if (s1 - s0 === 1) {
      const only = await edge(s0);
      data.copy(only, head);
      return [only];
    }
    const pieces: Buffer[] = [];
    let from = 0;
    if (head > 0) {
      const first = await edge(s0);
      data.copy(first, head, 0, SECTOR - head);
      pieces.push(first);
      from = SECTOR - head;
    }
    const midEnd = tail > 0 ? data.length - (SECTOR - tail) : data.length;
    if (midEnd > from) pieces.push(data.subarray(from, midEnd));
    if (tail > 0) {
      const last = await edge(s1 - 1);
      data.copy(last, 0, midEnd);
      pieces.push(last);
    }
    return pieces;
  }

  /** Sets bits [s0, s1) of an allocated block once their data is written. */
  private async markSectors(block: number, s0: number, s1: number): Promise<void> {
    let w = this.bitmapWriters.get(block);
    if (!w) this.bitmapWriters.set(block, (w = { mutex: new Mutex(), users: 0 }));
    w.users++;
    try {
      await w.mutex.run(async () => {
        const current = (await this.leaf.readBitmap(block))!;
        let present = 0;
        forEachSetRun(current, s0, s1, (s, e) => (present += e - s));
        if (present === s1 - s0) return;
        const bitmap = Buffer.from(current);
        setBits(bitmap, s0, s1);
        // The window a crash can leave: data under clear bits (scrubbed at the next writable open).
        if (!this.unpersisted.has(block)) faultPoint('datapath-bitmap-pending');
        await this.leaf.writeBitmap(block, bitmap);
        if (allSet(bitmap, this.leaf.sectorsPerBlock)) this.becameFull.add(block);
      });
    } finally {
      if (--w.users === 0) this.bitmapWriters.delete(block);
    }
  }

  /**
   * Makes every write completed so far durable. Concurrent callers share a
   * flush that has not started yet; one that started earlier may miss their writes.
   */
  flush(): Promise<void> {
    if (this.queuedFlush) return this.queuedFlush;
    const run = this.flushTail.then(() => {
      this.queuedFlush = undefined;
      return this.persist();
    });
    this.queuedFlush = run;
    this.flushTail = run.catch(() => undefined);
    return run;
  }

  private async persist(): Promise<void> {
    const leaf = this.leaf;
    // The BAT as it is now: each entry in it points at a block already written,
    // so the sync below makes all of them durable before any reaches the disk.
    const bat = leaf.bat.slice();
    const blocks = [...this.unpersisted];
    // fdatasync: clients' writes overwrite the leaf in place, so a flush needs no journal commit for the timestamps.
    await leaf.syncData();
    if (blocks.length === 0) return;
    faultPoint('datapath-flush-synced');
    await leaf.writeBatEntries(blocks, bat);
    faultPoint('datapath-flush-bat-written');
    await leaf.syncData();
    for (const b of blocks) this.unpersisted.delete(b);
  }

  /**
   * After the last write: flush, then the batmap bits of blocks that became full, durable.
   * `durable` false (a pause whose caller reads the leaf through this host's page cache and syncs
   * what it changes): only what the file would lack is written, the BAT entries of blocks allocated
   * since the last flush (with the fsyncs they need); the batmap bits are left unset (a reader then
   * reads the block's bitmap, which is all they save).
   */
  async finish(durable = true): Promise<void> {
    if (!durable) {
      if (this.batPending) await this.flush();
      return;
    }
    await this.flush();
    faultPoint('datapath-close-flushed');
    if (this.becameFull.size > 0) {
      await this.leaf.markFull(this.becameFull);
      await this.leaf.syncData();
      this.becameFull.clear();
    }
  }
}
