/**
 * Coalesce: copy every sector a child holds into its parent, so the parent alone
 * reads as the child did. Per block the child's bitmap and data are read once and
 * the parent's block is read, merged and written once. Data is made durable before
 * the parent's BAT points at it, and the merge is idempotent, so running it again
 * after a crash gives the same result.
 */
import { allSet, forEachSetRun, noneSet } from './format/bitmap.js';
import { SECTOR } from './format/constants.js';
import { VhdError } from './errors.js';
import { BlockBuffer, VhdImage } from './image.js';
import { ParentResolver, siblingResolver } from './parent.js';
import { setVirtualSize } from './resize.js';

export interface CoalesceProgress {
  blocksDone: number;
  blocksTotal: number;
  bytesCopied: number;
  elapsedMs: number;
}

export interface CoalesceOptions {
  resolver?: ParentResolver;
  /** Called after each batch is durable. */
  onProgress?: (p: CoalesceProgress) => void;
  /** Checked between batches: an aborted coalesce leaves both images consistent. */
  signal?: AbortSignal;
  /** Bytes of new parent blocks written per batch before a durability barrier. */
  batchBytes?: number;
  /** Copy no faster than this (bytes/s), to leave I/O to running VMs. */
  maxBytesPerSecond?: number;
}

export interface CoalesceResult {
  sectors: number;
  blocks: number;
  bytesCopied: number;
  elapsedMs: number;
}

/** Coalesces the image at `childPath` into its parent. */
export async function coalesceIntoParent(childPath: string, opts: CoalesceOptions = {}): Promise<CoalesceResult> {
  const child = await VhdImage.open(childPath, false);
  try {
    if (!child.isDifferencing) throw new VhdError('invalid-argument', 'not a differencing image: nothing to coalesce into', childPath);
    const parentPath = await (opts.resolver ?? siblingResolver)(child);
    const parent = await VhdImage.open(parentPath, true);
    try {
      if (!parent.footer.uuid.equals(child.header.parentUuid)) {
        throw new VhdError('chain', `parent ${parentPath} has uuid ${parent.uuid}, expected ${child.parentUuid}`, childPath);
      }
      return await coalesceImages(child, parent, opts);
    } finally {
      await parent.close();
    }
  } finally {
    await child.close();
  }
}

export async function coalesceImages(child: VhdImage, parent: VhdImage, opts: CoalesceOptions = {}): Promise<CoalesceResult> {
  if (child.blockSize !== parent.blockSize) throw new VhdError('unsupported', 'parent and child block sizes differ', child.path);
  if (child.virtualSize > parent.virtualSize) {
    // The child was grown after the snapshot: the parent takes its size.
    if (child.blockCount > parent.header.maxTableEntries) {
      throw new VhdError('invalid-argument', 'parent has no BAT room for the child\'s size: resize the parent first', parent.path);
    }
    await setVirtualSize(parent, child.virtualSize);
  }
  const started = Date.now();
  const spb = child.sectorsPerBlock;
  // Child blocks in on-disk order, so reads stream.
  const order: number[] = [];
  for (let i = 0; i < child.blockCount; i++) if (child.hasBlock(i)) order.push(i);
  order.sort((a, b) => child.bitmapOffset(a) - child.bitmapOffset(b));
  const batchBytes = opts.batchBytes ?? 64 * 1024 * 1024;
  const result: CoalesceResult = { sectors: 0, blocks: 0, bytesCopied: 0, elapsedMs: 0 };

  const pool = new BlockPool(child.bitmapBytes + child.blockSize);
  let pendingNew: BlockBuffer[] = [];
  let pendingNewBytes = 0;
  const full: number[] = [];
  // Appends run one at a time (each extends the file) but overlap with reading
  // the next batch: data durable, then the BAT points at it.
  let appending: Promise<void> = Promise.resolve();
  const flushNew = async () => {
    if (pendingNew.length === 0) return;
    const batch = pendingNew;
    pendingNew = [];
    pendingNewBytes = 0;
    await appending;
    appending = (async () => {
      await parent.appendBlocks(batch);
      pool.give(...batch);
      await parent.sync();
      await parent.writeBatEntries(batch.map((b) => b.index));
    })();
    appending.catch(() => undefined); // surfaced by the next await
  };

  // Read-ahead: a few child blocks are read while the current one is merged/written.
  // (A read-ahead left behind by an error or abort must not become an unhandled rejection.)
  const READ_AHEAD = 4;
  const reads: Promise<BlockBuffer>[] = [];
  let nextRead = 0;
  const fillReads = () => {
    while (reads.length < READ_AHEAD && nextRead < order.length) {
      const p = child.readBlock(order[nextRead++], pool.take());
      p.catch(() => undefined);
      reads.push(p);
    }
  };
  fillReads();
  for (let k = 0; k < order.length; k++) {
    if (opts.signal?.aborted) break;
    const c = await reads.shift()!;
    fillReads();
    const i = c.index;
    if (child.isBlockFull(i)) c.bitmap.fill(0xff);
    if (noneSet(c.bitmap, spb)) {
      pool.give(c);
      continue;
    }
    let sectors = 0;
    if (!parent.hasBlock(i)) {
      // New parent block: the child's sectors, zeros elsewhere (clear bits must read as zero).
      forEachSetRun(c.bitmap, 0, spb, (s, e) => (sectors += e - s));
      if (sectors !== spb) zeroClearSectors(c.bitmap, c.data, spb);
      pendingNew.push(c); // each read has its own buffer: no copy needed
      pendingNewBytes += c.data.length;
      if (sectors === spb) full.push(i);
    } else {
      const p = await parent.readBlock(i, pool.take());
      if (parent.isBlockFull(i)) p.bitmap.fill(0xff);
      forEachSetRun(c.bitmap, 0, spb, (s, e) => {
        c.data.copy(p.data, s * SECTOR, s * SECTOR, e * SECTOR);
        for (let b = s >> 3; b <= (e - 1) >> 3; b++) p.bitmap[b] |= rangeMask(b, s, e);
        sectors += e - s;
      });
      await parent.writeBlock(p);
      if (allSet(p.bitmap, spb)) full.push(i);
      pool.give(c, p);
    }
    result.sectors += sectors;
    result.blocks++;
    result.bytesCopied += sectors * SECTOR;
    if (opts.maxBytesPerSecond) {
      // Sleep until the average rate is back under the limit (at most a block's worth: abort stays prompt).
      const ahead = (result.bytesCopied / opts.maxBytesPerSecond) * 1000 - (Date.now() - started);
      if (ahead > 0) await new Promise((r) => setTimeout(r, ahead));
    }
    if (pendingNewBytes >= batchBytes) {
      await flushNew();
      opts.onProgress?.({ blocksDone: k + 1, blocksTotal: order.length, bytesCopied: result.bytesCopied, elapsedMs: Date.now() - started });
    }
  }
  await flushNew();
  await appending;
  // Batmap bits last: a bit that reached the disk before its block only costs a
  // bitmap read (readers check the BAT first). One barrier covers both.
  await parent.markFull(full);
  await parent.sync();
  result.elapsedMs = Date.now() - started;
  opts.onProgress?.({ blocksDone: order.length, blocksTotal: order.length, bytesCopied: result.bytesCopied, elapsedMs: result.elapsedMs });
  if (opts.signal?.aborted) throw new VhdError('aborted', 'coalesce aborted', child.path);
  return result;
}

/** Block buffers reused through the copy: coalescing GiBs must not churn GiBs of garbage. */
class BlockPool {
  private readonly free: Buffer[] = [];
  constructor(private readonly span: number) {}

  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafe(this.span);
  }

  /** Back to the pool once nothing reads or writes them any more. */
  give(...blocks: BlockBuffer[]): void {
    for (const b of blocks) this.free.push(Buffer.from(b.bitmap.buffer, b.bitmap.byteOffset, this.span));
  }
}

/** Bits of byte `b` that fall within sector range [s, e). */
function rangeMask(b: number, s: number, e: number): number {
  let mask = 0;
  for (let bit = Math.max(s, b * 8); bit < Math.min(e, b * 8 + 8); bit++) mask |= 0x80 >> (bit & 7);
  return mask;
}

function zeroClearSectors(bitmap: Buffer, data: Buffer, spb: number): void {
  let prevEnd = 0;
  forEachSetRun(bitmap, 0, spb, (s, e) => {
    if (s > prevEnd) data.fill(0, prevEnd * SECTOR, s * SECTOR);
    prevEnd = e;
  });
  if (prevEnd < spb) data.fill(0, prevEnd * SECTOR, spb * SECTOR);
}
