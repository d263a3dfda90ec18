/**
 * Coalesce: copy every sector a child holds into its parent, so the parent alone
 * reads as the child did. Per block the child's bitmap and data are read once and
 * the parent's block is read, merged and written once. Data is made durable before
 * the parent's BAT points at it, and the merge is idempotent, so running it again
 * after a crash gives the same result.
 */
import { allSet, countSet, noneSet } from './format/bitmap.js';
import { SECTOR } from './format/constants.js';
import { VhdError } from './errors.js';
import { BlockBuffer, VhdImage } from './image.js';
import { ParentResolver, siblingResolver } from './parent.js';
import { setVirtualSize } from './resize.js';
import type { CopyMethod } from '../native/copy-ranges.js';
import { InKernelCopy, inKernelCopyBetween, type PreparedInKernelCopy, RangedBlock } from './coalesce-in-kernel.js';
import { copyMaskedBlock, maskedBlocks, type MaskedBlockCopy } from './coalesce-masked.js';
import { markRuns, maskedBitmap, mergeNearRuns, setRuns, zeroClearSectors } from './sector-runs.js';

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
  /** Bytes of new parent blocks written per batch before a durability barrier (64 MiB; 256 MiB copied in the kernel without a rate cap). */
  batchBytes?: number;
  /** Copy no faster than this (bytes/s), to leave I/O to running VMs. */
  maxBytesPerSecond?: number;
  /** Only these sectors of the children, as block index -> sector bitmap (a live leaf's writes since the last copy); absent: all. */
  sectors?: ReadonlyMap<number, Uint8Array>;
  /**
   * Copy the data inside the kernel (copy_file_range, lib/native/copy-ranges)
   * between files; default true. False, or where it cannot run (no program
   * built, a device): the data is read into this process and written out.
   */
  inKernel?: boolean;
  /** Told once per process why the copy goes through this process instead (the program is missing). */
  onNotice?: (message: string) => void;
  /** The copy program started ahead on the same two files (a live leaf-coalesce's pause): its first run. */
  prepared?: PreparedInKernelCopy;
}

export interface CoalesceResult {
  sectors: number;
  blocks: number;
  bytesCopied: number;
  elapsedMs: number;
  /** How the data went: inside the kernel, through the copy program's buffer (the kernel refused), or through this process. */
  copiedBy: CopyMethod | 'this-process';
  /** Of elapsedMs: waiting for the parent's barriers (fsync; in a long copy they overlap the next batch's copy). */
  barrierMs: number;
  /** Of elapsedMs: the copy program's runs (in the kernel only). */
  programMs: number;
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

/**
 * Coalesces a run of differencing images into their common ancestor in one
 * pass: `chainPaths` lists them from the ancestor's child upwards, and each is
 * copied in turn, so a sector ends with the value of the highest image holding
 * it. Readers through the chain see no change meanwhile (every sector written is
 * still shadowed by an image above), and running it all again after a crash
 * gives the same result.
 */
export async function coalesceChainInto(chainPaths: string[], ancestorPath: string, opts: CoalesceOptions = {}): Promise<CoalesceResult> {
  const ancestor = await VhdImage.open(ancestorPath, true);
  const children: VhdImage[] = [];
  try {
    let below = ancestor;
    for (const path of chainPaths) {
      const child = await VhdImage.open(path, false);
      children.push(child);
      if (!child.isDifferencing || !child.header.parentUuid.equals(below.footer.uuid)) {
        throw new VhdError('chain', `parent of ${path} is ${child.parentUuid}, expected ${below.uuid}`, path);
      }
      below = child;
    }
    return await coalesceImages(children, ancestor, opts);
  } finally {
    for (const c of children) await c.close();
    await ancestor.close();
  }
}

/** Copies every sector of `children` (lowest first) into `parent`. */
export async function coalesceImages(children: VhdImage | VhdImage[], parent: VhdImage, opts: CoalesceOptions = {}): Promise<CoalesceResult> {
  const list = Array.isArray(children) ? children : [children];
  for (const child of list) {
    if (child.blockSize !== parent.blockSize) throw new VhdError('unsupported', 'parent and child block sizes differ', child.path);
    if (child.virtualSize > parent.virtualSize) {
      // The child was grown after the snapshot: the parent takes its size.
      if (child.blockCount > parent.header.maxTableEntries) {
        throw new VhdError('invalid-argument', 'parent has no BAT room for the child\'s size: resize the parent first', parent.path);
      }
      await setVirtualSize(parent, child.virtualSize);
    }
  }
  const copier = new BlockCopier(parent, opts);
  try {
    for (const child of list) {
      if (opts.signal?.aborted) break;
      await copier.copyFrom(child);
    }
    return await copier.finish();
  } finally {
    await copier.settle();
  }
}

/**
 * The copy engine. New parent blocks are appended in batches; a batch's data is
 * made durable before the BAT points at it, and the next batch is appended while
 * that barrier runs, so the disk never waits for the copy loop.
 */
class BlockCopier {
  private readonly started = Date.now();
  private readonly result: CoalesceResult = { sectors: 0, blocks: 0, bytesCopied: 0, elapsedMs: 0, copiedBy: 'this-process', barrierMs: 0, programMs: 0 };
  private readonly pool: BlockPool;
  private readonly batchBytes: number;
  /** The BAT as it may be written: only entries whose blocks are durable (appends run ahead of it). */
  private readonly durableBat: Uint32Array;
  private readonly full: number[] = [];
  private pending: BlockBuffer[] = [];
  /** Blocks whose data is copied in the kernel (copyInKernel), and by which copy. */
  private ranged: RangedBlock[] = [];
  private inKernel: InKernelCopy | undefined;
  private pendingBytes = 0;
  private appended: Promise<void> = Promise.resolve();
  private committed: Promise<void> = Promise.resolve();
  /** The commit before `committed`: the next append waits for it, not for the latest. */
  private committedBefore: Promise<void> = Promise.resolve();
  private blocksDone = 0;
  private blocksTotal = 0;
  /** Blocks the parent has were written in place outside the batches (the copies through this process). */
  private writesOutsideBatches = false;
  /** The last batch's commit wrote nothing after its barrier (no new BAT entries). */
  private nothingAfterBarrier = false;

  constructor(
    private readonly parent: VhdImage,
    private readonly opts: CoalesceOptions,
  ) {
    this.pool = new BlockPool(parent.bitmapBytes + parent.blockSize);
    this.batchBytes = opts.batchBytes ?? 64 * 1024 * 1024;
    this.durableBat = Uint32Array.from(parent.bat);
  }

  async copyFrom(child: VhdImage): Promise<void> {
    const inKernel = this.opts.inKernel === false ? undefined : inKernelCopyBetween(child, this.parent, this.opts.onNotice, this.opts.prepared);
    const only = this.opts.sectors;
    if (inKernel) return this.copyInKernel(child, inKernel, only);
    if (only) return this.copyMasked(child, only);
    const { parent, opts, pool, result } = this;
    this.writesOutsideBatches = true;
    const spb = child.sectorsPerBlock;
    // Child blocks in on-disk order, so reads stream.
    const order: number[] = [];
    for (let i = 0; i < child.blockCount; i++) if (child.hasBlock(i)) order.push(i);
    order.sort((a, b) => child.bitmapOffset(a) - child.bitmapOffset(b));
    this.blocksTotal += order.length;

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
      this.blocksDone++;
      const i = c.index;
      if (child.isBlockFull(i)) c.bitmap.fill(0xff);
      if (noneSet(c.bitmap, spb)) {
        pool.give(c);
        continue;
      }
      let sectors: number;
      if (!parent.hasBlock(i)) {
        // New parent block: the child's sectors, zeros elsewhere (clear bits must read as zero).
        sectors = countSet(c.bitmap, spb);
        if (sectors !== spb) zeroClearSectors(c.bitmap, c.data, spb);
        this.pending.push(c); // each read has its own buffer: no copy needed
        this.pendingBytes += c.data.length;
        if (sectors === spb) this.full.push(i);
      } else {
        const p = await parent.readBlock(i, pool.take());
        if (parent.isBlockFull(i)) p.bitmap.fill(0xff);
        const runs = setRuns(c.bitmap, spb);
        for (const [s, e] of runs) c.data.copy(p.data, s * SECTOR, s * SECTOR, e * SECTOR);
        sectors = markRuns(p.bitmap, runs);
        await parent.writeBlock(p);
        if (allSet(p.bitmap, spb)) this.full.push(i);
        pool.give(c, p);
      }
      result.sectors += sectors;
      result.blocks++;
      result.bytesCopied += sectors * SECTOR;
      await this.keepUnderRate();
      if (this.pendingBytes >= this.batchBytes) {
        await this.flush();
        this.progress();
      }
    }
    // The next child may hold the same blocks: the parent must own this child's new ones first.
    await this.flush();
    await this.appended;
  }

  /** Under a rate cap: sleeps until the average rate is back under it (at most a block's worth: abort stays prompt). */
  private async keepUnderRate(): Promise<void> {
    const rate = this.opts.maxBytesPerSecond;
    if (!rate) return;
    const ahead = (this.result.bytesCopied / rate) * 1000 - (Date.now() - this.started);
    if (ahead > 0) await new Promise((r) => setTimeout(r, ahead));
  }

  /**
   * copyFrom with the data copied inside the kernel: per block only the
   * child's bitmap is read here (before its data is copied, so a live leaf's
   * sector is never copied older than its bit); the data runs go to the
   * parent in one program run per batch (flush -> InKernelCopy.write), with
   * the same barriers as the copy through this process. With `only` (a live
   * leaf's writes since the last copy), just those sectors of the blocks it
   * names, runs merged as copyMasked merges them: the whole final copy of a
   * live leaf-coalesce in one program run instead of a read and a write per run.
   */
  private async copyInKernel(child: VhdImage, copy: InKernelCopy, only?: ReadonlyMap<number, Uint8Array>): Promise<void> {
    const { parent, opts, result } = this;
    const spb = child.sectorsPerBlock;
    let order: number[];
    if (only) order = maskedBlocks(child, only);
    else {
      order = [];
      for (let i = 0; i < child.blockCount; i++) if (child.hasBlock(i)) order.push(i);
      order.sort((a, b) => child.bitmapOffset(a) - child.bitmapOffset(b));
    }
    this.blocksTotal += order.length;
    this.inKernel = copy;
    let mergedBytes = 0;
    // No buffers held per batch here, so larger batches: fewer barriers (a 1 GiB copy took 2.1 s
    // in 256 MiB batches against 2.9 s in 64 MiB ones, cp 1.6 s, same run). Under a rate
    // cap the usual batches, so the I/O left to running VMs does not come in 256 MiB bursts.
    const batchBytes = opts.batchBytes ?? (opts.maxBytesPerSecond ? this.batchBytes : IN_KERNEL_BATCH_BYTES);
    // Bitmaps (the child's, and the parent's where it has the block) read ahead: one small
    // read per block would otherwise wait on the disk each time. Each block comes once per
    // child, and a batch writes only its own blocks' bitmaps, so a bitmap read ahead is current.
    const READ_AHEAD = 16;
    const bitmaps: Promise<[Buffer, Buffer | undefined]>[] = [];
    let nextRead = 0;
    const fillReads = () => {
      while (bitmaps.length < READ_AHEAD && nextRead < order.length) {
        const i = order[nextRead++];
        const held = child.isBlockFull(i) ? Promise.resolve(Buffer.alloc(child.bitmapBytes, 0xff)) : child.readBitmap(i).then((b) => Buffer.from(b!));
        const mine = !parent.hasBlock(i) ? undefined : parent.isBlockFull(i) ? Buffer.alloc(parent.bitmapBytes, 0xff) : parent.readBitmap(i).then((b) => Buffer.from(b!));
        const p = Promise.all([held, mine]);
        p.catch(() => undefined);
        bitmaps.push(p);
      }
    };
    fillReads();
    for (const i of order) {
      if (opts.signal?.aborted) break;
      const [held, mine] = await bitmaps.shift()!;
      fillReads();
      this.blocksDone++;
      const bitmap = only ? maskedBitmap(held, only.get(i)!) : held;
      if (noneSet(bitmap, spb)) continue;
      const copyRuns = (runs: [number, number][]) => runs.map(([s, e]) => ({ src: child.dataOffset(i) + s * SECTOR, at: s * SECTOR, length: (e - s) * SECTOR }));
      let sectors: number;
      if (!mine) {
        const runs = setRuns(bitmap, spb);
        sectors = countSet(bitmap, spb);
        this.ranged.push({ index: i, bitmap, fresh: true, copies: copyRuns(runs) });
        this.pendingBytes += child.blockSize;
        if (sectors === spb) this.full.push(i);
      } else {
        // Sectors the child holds between two near runs go too (what copyMasked does through this process).
        const runs = only ? mergeNearRuns(bitmap, held, spb) : setRuns(bitmap, spb);
        sectors = markRuns(mine, runs);
        this.ranged.push({ index: i, bitmap: mine, fresh: false, copies: copyRuns(runs) });
        mergedBytes += sectors * SECTOR;
        if (allSet(mine, spb)) this.full.push(i);
      }
      result.sectors += sectors;
      result.blocks++;
      result.bytesCopied += sectors * SECTOR;
      await this.keepUnderRate();
      // A batch counts new blocks' bytes as the copy through this process does; merged bytes bound it too.
      if (this.pendingBytes >= batchBytes || mergedBytes >= batchBytes) {
        mergedBytes = 0;
        await this.flush();
        this.progress();
      }
    }
    await this.flush();
    await this.appended;
    if (copy.method) result.copiedBy = copy.method;
  }

  /**
   * Only the given sectors (a live leaf's writes since the last copy, a few in
   * many blocks), through this process (no copy program, or a device):
   * several blocks at once (copyMaskedBlock), taken back in order, so new
   * parent blocks are appended in the same batches and order as one at a time.
   */
  private async copyMasked(child: VhdImage, sectors: ReadonlyMap<number, Uint8Array>): Promise<void> {
    const { parent, opts, pool, result } = this;
    this.writesOutsideBatches = true;
    const blocks = maskedBlocks(child, sectors);
    this.blocksTotal += blocks.length;
    const IN_FLIGHT = 8;
    const running: Promise<MaskedBlockCopy | undefined>[] = [];
    let next = 0;
    const start = () => {
      while (running.length < IN_FLIGHT && next < blocks.length) {
        const i = blocks[next++];
        const p = copyMaskedBlock(child, parent, i, sectors.get(i)!, () => pool.take());
        p.catch(() => undefined); // surfaced when its turn comes, or settled below
        running.push(p);
      }
    };
    try {
      start();
      while (running.length > 0) {
        if (opts.signal?.aborted) break;
        const done = await running.shift()!;
        start();
        this.blocksDone++;
        if (!done) continue;
        if (done.fresh) {
          this.pending.push(done.fresh);
          this.pendingBytes += done.fresh.data.length;
        }
        if (done.full) this.full.push(done.index);
        result.sectors += done.sectors;
        result.blocks++;
        result.bytesCopied += done.sectors * SECTOR;
        await this.keepUnderRate();
        if (this.pendingBytes >= this.batchBytes) {
          await this.flush();
          this.progress();
        }
      }
    } finally {
      // After an error or an abort: nothing may still be writing when the images are closed.
      await Promise.allSettled(running);
    }
    await this.flush();
    await this.appended;
  }

  /** Appends the pending blocks once the previous append is done; their commit follows the previous commit. */
  private async flush(): Promise<void> {
    if (this.pending.length === 0 && this.ranged.length === 0) return;
    const batch = this.pending;
    const ranged = this.ranged;
    const copy = this.inKernel;
    this.pending = [];
    this.ranged = [];
    this.pendingBytes = 0;
    // Appends in order, at most one batch ahead of the barrier still running
    // (bounded memory); errors of earlier batches surface here.
    await Promise.all([this.appended, this.committedBefore]);
    const appended = (async () => {
      if (ranged.length) await copy!.write(ranged);
      if (batch.length) await this.parent.appendBlocks(batch).then(() => this.pool.give(...batch));
    })();
    const placed = [...batch.map((b) => b.index), ...ranged.filter((b) => b.fresh).map((b) => b.index)];
    const previous = this.committed;
    this.committedBefore = previous;
    this.appended = appended;
    this.committed = Promise.all([appended, previous]).then(async () => {
      await this.barrier();
      for (const i of placed) this.durableBat[i] = this.parent.bat[i];
      await this.parent.writeBatEntries(placed, this.durableBat);
      this.nothingAfterBarrier = placed.length === 0;
    });
    this.appended.catch(() => undefined); // surfaced by the next await
    this.committed.catch(() => undefined);
  }

  /**
   * The parent's fdatasync, timed: the part of a short copy (a live leaf-coalesce's final step) the disk decides.
   * Data and what reading it needs (size, allocation), not timestamps: an in-place copy then commits no
   * filesystem journal, which would first write out other files' data (ext4's ordered mode).
   */
  private async barrier(): Promise<void> {
    const t0 = performance.now();
    await this.parent.syncData();
    this.result.barrierMs += Math.round(performance.now() - t0);
  }

  private progress(): void {
    this.opts.onProgress?.({ blocksDone: this.blocksDone, blocksTotal: this.blocksTotal, bytesCopied: this.result.bytesCopied, elapsedMs: Date.now() - this.started });
  }

  async finish(): Promise<CoalesceResult> {
    await this.flush();
    await this.appended;
    await this.committed;
    // Batmap bits last: a bit that reached the disk before its block only costs a
    // bitmap read (readers check the BAT first). One barrier covers both.
    const marks = this.full.some((i) => !this.parent.isBlockFull(i));
    await this.parent.markFull(this.full);
    // The last batch's barrier already covers every write when all went through batches and
    // nothing (BAT entries, batmap bits) came after it: a second fsync cost 0-20 ms under load.
    if (marks || this.writesOutsideBatches || !this.nothingAfterBarrier) await this.barrier();
    this.result.elapsedMs = Date.now() - this.started;
    this.result.programMs = this.inKernel?.programMs ?? 0;
    this.progress();
    if (this.opts.signal?.aborted) throw new VhdError('aborted', 'coalesce aborted', this.parent.path);
    return this.result;
  }

  /** After an error: nothing may still be writing when the images are closed. */
  async settle(): Promise<void> {
    await Promise.allSettled([this.appended, this.committed, this.committedBefore]);
  }
}

/** Default batch of the in-kernel copy (the copy through this process: 64 MiB, its buffers' memory). */
const IN_KERNEL_BATCH_BYTES = 256 * 1024 * 1024;

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

