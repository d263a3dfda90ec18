/**
 * A chain of images, leaf first: reads resolve each sector to the nearest image
 * that holds it; writes go to the leaf. BATs are cached by each image and the
 * batmap lets fully allocated blocks skip the per-sector bitmaps.
 */
import { resolve } from 'node:path';
import { allSet, forEachSetRun, setBits } from './format/bitmap.js';
import { SECTOR } from './format/constants.js';
import { VhdError } from './errors.js';
import { VhdImage } from './image.js';
import { ParentResolver, siblingResolver } from './parent.js';

export interface ChainOptions {
  /** Open the leaf for writing (parents are always read-only). */
  writable?: boolean;
  /** Writes: make each new block durable before the BAT points at it (slower, crash-safe). */
  durable?: boolean;
  resolver?: ParentResolver;
  /** Refuse chains deeper than this (a loop guard as much as a limit). */
  maxDepth?: number;
  /**
   * Images already open elsewhere, to take instead of opening `parentPath`
   * again: the image that is that file, followed by as many of its ancestors
   * as the caller vouches for, in order (a chain opened before, unchanged
   * since); their links are checked here, by uuid. Empty or undefined: open
   * it. Such images are the caller's until the chain owns them: a failed
   * open leaves them open.
   */
  reuse?: (parentPath: string) => Promise<readonly VhdImage[] | undefined>;
}

export class VhdChain {
  private constructor(
    readonly images: VhdImage[],
    private readonly durable: boolean,
    /** The images taken from ChainOptions.reuse rather than opened here. */
    private readonly reused: ReadonlySet<VhdImage> = new Set(),
  ) {}

  static async open(leafPath: string, opts: ChainOptions = {}): Promise<VhdChain> {
    const resolver = opts.resolver ?? siblingResolver;
    const maxDepth = opts.maxDepth ?? 256;
    const images: VhdImage[] = [];
    const opened: VhdImage[] = [];
    const seen = new Set<string>();
    try {
      let image = await VhdImage.open(leafPath, opts.writable ?? false);
      images.push(image);
      opened.push(image);
      seen.add(resolve(leafPath));
      while (image.isDifferencing) {
        if (images.length >= maxDepth) throw new VhdError('chain', `chain deeper than ${maxDepth}`, leafPath);
        const parentPath = await resolver(image);
        const reused = (await opts.reuse?.(parentPath)) ?? [];
        const parents = reused.length > 0 ? reused : [await VhdImage.open(parentPath, false)];
        if (reused.length === 0) opened.push(parents[0]);
        for (const parent of parents) {
          if (images.length >= maxDepth) throw new VhdError('chain', `chain deeper than ${maxDepth}`, leafPath);
          if (seen.has(resolve(parent.path))) throw new VhdError('chain', `parent loop at ${parent.path}`, leafPath);
          seen.add(resolve(parent.path));
          images.push(parent);
          if (!image.isDifferencing || !parent.footer.uuid.equals(image.header.parentUuid)) {
            throw new VhdError('chain', `parent ${parent.path} has uuid ${parent.uuid}, expected ${image.parentUuid}`, image.path);
          }
          image = parent;
        }
      }
      return new VhdChain(images, opts.durable ?? false, new Set(images.filter((i) => !opened.includes(i))));
    } catch (err) {
      await Promise.all(opened.map((i) => i.close()));
      throw err;
    }
  }

  get leaf(): VhdImage {
    return this.images[0];
  }
  get depth(): number {
    return this.images.length;
  }
  get virtualSize(): number {
    return this.leaf.virtualSize;
  }

  async close(): Promise<void> {
    await Promise.all(this.images.map((i) => i.close()));
  }

  /** A chain given up before anyone used it: closes what it opened itself; the images it reused stay open for their owner. */
  async abandon(): Promise<void> {
    await Promise.all(this.images.filter((i) => !this.reused.has(i)).map((i) => i.close()));
  }

  /** Reads `buf.length` bytes at virtual byte `offset` (any alignment). */
  async read(buf: Buffer, offset: number): Promise<void> {
    checkRange(offset, buf.length, this.virtualSize);
    const first = Math.floor(offset / SECTOR);
    const last = Math.ceil((offset + buf.length) / SECTOR);
    if (first * SECTOR === offset && last * SECTOR === offset + buf.length) {
      await this.readSectors(first, last, buf);
      return;
    }
    const tmp = Buffer.alloc((last - first) * SECTOR);
    await this.readSectors(first, last, tmp);
    tmp.copy(buf, 0, offset - first * SECTOR, offset - first * SECTOR + buf.length);
  }

  /** Fills `out` with sectors [from, to) of the virtual disk. */
  private async readSectors(from: number, to: number, out: Buffer): Promise<void> {
    const spb = this.leaf.sectorsPerBlock;
    const jobs: Promise<void>[] = [];
    for (let s = from; s < to; ) {
      const block = Math.floor(s / spb);
      const end = Math.min(to, (block + 1) * spb);
      jobs.push(this.readInBlock(block, s - block * spb, end - block * spb, out.subarray((s - from) * SECTOR, (end - from) * SECTOR)));
      s = end;
    }
    await Promise.all(jobs);
  }

  /** Sectors [from, to) of one block, each from the nearest image that has it. */
  private async readInBlock(block: number, from: number, to: number, out: Buffer): Promise<void> {
    const n = to - from;
    let owner: Int16Array | undefined; // chain level per sector, -1 = not yet found
    let unresolved = n;
    for (let level = 0; level < this.images.length && unresolved > 0; level++) {
      const img = this.images[level];
      if (block < img.blockCount && img.hasBlock(block)) {
        if (owner === undefined && img.isBlockFull(block)) {
          await img.readData(block, from * SECTOR, out);
          return;
        }
        owner ??= new Int16Array(n).fill(-1);
        if (img.isBlockFull(block)) {
          for (let k = 0; k < n; k++) if (owner[k] < 0) owner[k] = level;
          unresolved = 0;
        } else {
          const bm = (await img.readBitmap(block))!;
          forEachSetRun(bm, from, to, (s, e) => {
            for (let k = s - from; k < e - from; k++) {
              if (owner![k] < 0) {
                owner![k] = level;
                unresolved--;
              }
            }
          });
        }
      }
      if (!img.isDifferencing) break;
    }
    if (owner === undefined) {
      out.fill(0);
      return;
    }
    const reads: Promise<void>[] = [];
    for (let k = 0; k < n; ) {
      const level = owner[k];
      let e = k + 1;
      while (e < n && owner[e] === level) e++;
      const part = out.subarray(k * SECTOR, e * SECTOR);
      if (level < 0) part.fill(0);
      else reads.push(this.images[level].readData(block, (from + k) * SECTOR, part));
      k = e;
    }
    await Promise.all(reads);
  }

  /** Writes `data` at virtual byte `offset` into the leaf (any alignment). */
  async write(data: Buffer, offset: number): Promise<void> {
    checkRange(offset, data.length, this.virtualSize);
    if (!this.leaf.io.writable) throw new VhdError('invalid-argument', 'image opened read-only', this.leaf.path);
    const blockSize = this.leaf.blockSize;
    for (let pos = offset; pos < offset + data.length; ) {
      const block = Math.floor(pos / blockSize);
      const end = Math.min(offset + data.length, (block + 1) * blockSize);
      await this.writeInBlock(block, pos - block * blockSize, data.subarray(pos - offset, end - offset));
      pos = end;
    }
  }

  private async writeInBlock(block: number, byteInBlock: number, data: Buffer): Promise<void> {
    const leaf = this.leaf;
    const s0 = Math.floor(byteInBlock / SECTOR);
    const s1 = Math.ceil((byteInBlock + data.length) / SECTOR);
    const base = leaf.sectorsPerBlock * block;
    // Whole sectors: edges that are only partly overwritten keep what the chain holds.
    let sectors = data;
    if (s0 * SECTOR !== byteInBlock || s1 * SECTOR !== byteInBlock + data.length) {
      sectors = Buffer.alloc((s1 - s0) * SECTOR);
      await this.readSectors(base + s0, base + s1, sectors);
      data.copy(sectors, byteInBlock - s0 * SECTOR);
    }
    if (!leaf.hasBlock(block)) {
      const bitmap = Buffer.alloc(leaf.bitmapBytes);
      const blockData = Buffer.alloc(leaf.blockSize);
      sectors.copy(blockData, s0 * SECTOR);
      setBits(bitmap, s0, s1);
      await leaf.appendBlocks([{ index: block, bitmap, data: blockData }]);
      if (this.durable) await leaf.sync();
      await leaf.writeBatEntries([block]);
      if (allSet(bitmap, leaf.sectorsPerBlock)) await leaf.markFull([block]);
      return;
    }
    await leaf.writeData(block, s0 * SECTOR, sectors);
    if (!leaf.isBlockFull(block)) await leaf.markSectors(block, s0, s1);
  }

  async sync(): Promise<void> {
    await this.leaf.sync();
  }
}

function checkRange(offset: number, length: number, size: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > size) {
    throw new VhdError('invalid-argument', `range ${offset}+${length} is outside the virtual size ${size}`);
  }
}
