/**
 * A VHD chain as a BlockDevice (lib/nbd's contract), opened from its leaf path.
 * Read-only (a snapshot, a base copy): read, extents and close only, so the
 * server advertises READ_ONLY. Writable: the leaf takes writes (LeafWriter has
 * the ordering), flush, native FUA and zero; parents stay read-only. One device
 * object serves every connection (multi-conn). After close every call rejects
 * with ESHUTDOWN.
 */
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../nbd/block-device.js';
import { DeviceError } from '../nbd/block-device.js';
import { SECTOR } from '../vhd/format/constants.js';
import { scrubUnmarkedSectors, VhdChain, VhdError, type ChainOptions, type ParentResolver, type VhdImage } from '../vhd/index.js';
import { chainExtents, heldSectors } from './extents.js';
import { LeafWriter } from './leaf-writer.js';

export interface VhdDeviceOptions {
  /** Open the leaf for writing (parents are always read-only). */
  writable?: boolean;
  resolver?: ParentResolver;
  maxDepth?: number;
  /**
   * false: the caller vouches that the leaf holds no data under clear bits (it
   * was closed cleanly, or scrubbed by whoever wrote it), so the scan of every
   * partial block a writable open makes is skipped (an unpause stays short).
   */
  scrub?: boolean;
  /** Parents already open (a chain kept across a pause): see ChainOptions.reuse. */
  reuse?: ChainOptions['reuse'];
}

/** The device for the chain ending at `leafPath`; a read-only one has no write, flush or zero member. */
export async function openVhdDevice(leafPath: string, opts: VhdDeviceOptions & { writable: true }): Promise<WritableVhdDevice>;
export async function openVhdDevice(leafPath: string, opts?: VhdDeviceOptions): Promise<VhdDevice>;
export async function openVhdDevice(leafPath: string, opts: VhdDeviceOptions = {}): Promise<VhdDevice> {
  return opts.writable ? WritableVhdDevice.open(leafPath, opts) : VhdDevice.open(leafPath, opts);
}

export class VhdDevice implements BlockDevice {
  readonly size: number;
  readonly preferredBlockSize = 4096;
  readonly multiConn = true;
  private inFlight = 0;
  private drained: (() => void) | undefined;
  private closing: Promise<void> | undefined;
  /** Set by settle(): the images are final on disk and nothing is written through this device again. */
  private settling: Promise<void> | undefined;
  private released: Promise<void> | undefined;

  protected constructor(protected readonly chain: VhdChain) {
    this.size = chain.virtualSize;
  }

  static async open(leafPath: string, opts: VhdDeviceOptions = {}): Promise<VhdDevice> {
    const chain = await VhdChain.open(leafPath, { resolver: opts.resolver, maxDepth: opts.maxDepth, writable: false, reuse: opts.reuse });
    return new VhdDevice(chain);
  }

  /** The images, leaf first (for callers that report on the chain). */
  get paths(): string[] {
    return this.chain.images.map((i) => i.path);
  }

  /**
   * Whether any of `blocks` is allocated in the leaf but not yet in its
   * on-disk BAT (a flush writes it): what another reader of the file cannot
   * see yet. Never, read-only.
   */
  awaitsBat(blocks: Iterable<number>): boolean {
    void blocks;
    return false;
  }

  /** Whether any block allocated since the last flush lacks its on-disk BAT entry. Never, read-only. */
  get batPending(): boolean {
    return false;
  }

  /** Resolves once no new block of the leaf is being written, or after `ms` at most. At once, read-only. */
  allocationsDone(ms: number): Promise<void> {
    void ms;
    return Promise.resolve();
  }

  /** A chain of block devices (LVs): closed when it settles, never taken over (see settle()). */
  get onDevices(): boolean {
    return this.chain.images.some((i) => i.io.isDevice);
  }

  /** The open images, leaf first: what a chain opened after a pause may take over (see release). */
  get images(): readonly VhdImage[] {
    return this.chain.images;
  }

  /**
   * For a pause: waits for the calls in flight, makes the leaf final on disk
   * (every write durable, BAT and batmap written) and refuses every call from
   * then on, but keeps the images open, so the chain after the pause can take
   * them over instead of opening them again. What changes the chain next (a
   * snapshot renames the leaf and sets its hidden flag) finds it as a close
   * leaves it; nothing here writes to it again: close() and release() only
   * close handles. (A chain of block devices is closed here: see below.)
   * `durable` false: final in this host's page cache, not synced, but for
   * what the file would lack (LeafWriter.finish).
   */
  settle(opts: { durable?: boolean } = {}): Promise<void> {
    if (this.settling) return this.settling;
    if (this.closing) return this.closing; // closed already: nothing is left to write
    let refused!: () => void;
    this.closing = new Promise<void>((r) => (refused = r)); // track() refuses new calls from now on
    this.settling = (async () => {
      try {
        if (this.inFlight > 0) await new Promise<void>((r) => (this.drained = r));
        await this.finish(opts.durable !== false);
      } finally {
        refused();
      }
      // LVM renames, resizes and removes logical volumes while a VDI is paused (lvremove refuses an open
      // one), and they are never taken over (chain-reuse.ts): a chain on devices is closed here, as before.
      if (this.onDevices) await (this.released = this.chain.close());
    })();
    return this.settling;
  }

  /**
   * After settle(): closes the handles of every image but those in `keep`
   * (taken over by another chain), writing nothing. Once only.
   */
  release(keep: ReadonlySet<VhdImage> = new Set()): Promise<void> {
    if (!this.settling) return Promise.reject(new Error('release needs a settled device (settle() first)'));
    this.released ??= this.settling
      .catch(() => undefined) // a failed settle was reported to its caller; the handles still go
      .then(() => Promise.all(this.chain.images.filter((i) => !keep.has(i)).map((i) => i.close())))
      .then(() => undefined);
    return this.released;
  }

  read(buf: Buffer, offset: number): Promise<void> {
    return this.track(async () => {
      checkRange(offset, buf.length, this.size);
      await this.chain.read(buf, offset);
    });
  }

  extents(offset: number, length: number): Promise<Extent[]> {
    return this.track(async () => {
      checkRange(offset, length, this.size);
      return chainExtents(this.chain, offset, length);
    });
  }

  /** A device its opener gave up on before serving it: closes only the images it did not take over (VhdChain.abandon). */
  async abandon(): Promise<void> {
    this.closing ??= Promise.resolve();
    await this.chain.abandon();
  }

  /** Waits for the calls in flight, makes the leaf consistent and durable, closes every image. */
  close(): Promise<void> {
    if (this.settling) return this.release(); // made final by settle(): only the handles are left
    this.closing ??= (async () => {
      if (this.inFlight > 0) await new Promise<void>((r) => (this.drained = r));
      try {
        await this.finish();
      } finally {
        await this.chain.close();
      }
    })();
    return this.closing;
  }

  protected async finish(_durable = true): Promise<void> {}

  /** Runs one call: refused once closing, counted so close can wait for it, errors typed. */
  protected async track<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closing) throw new DeviceError('ESHUTDOWN', 'device closed');
    this.inFlight++;
    try {
      return await fn();
    } catch (err) {
      throw toDeviceError(err);
    } finally {
      if (--this.inFlight === 0 && this.drained) this.drained();
    }
  }
}

export class WritableVhdDevice extends VhdDevice {
  readonly nativeFua = true;
  private readonly writer: LeafWriter;

  override awaitsBat(blocks: Iterable<number>): boolean {
    for (const b of blocks) if (this.writer.awaitsBat(b)) return true;
    return false;
  }

  override get batPending(): boolean {
    return this.writer.batPending;
  }

  override allocationsDone(ms: number): Promise<void> {
    return this.writer.allocationsDone(ms);
  }

  private constructor(chain: VhdChain) {
    super(chain);
    this.writer = new LeafWriter(chain);
  }

  /**
   * Opens the chain with a writable leaf. A process killed between writing a
   * sector and setting its bitmap bit leaves data under a clear bit: that is
   * zeroed here, before any write (reads never saw it).
   */
  static override async open(leafPath: string, opts: VhdDeviceOptions = {}): Promise<WritableVhdDevice> {
    const chain = await VhdChain.open(leafPath, { resolver: opts.resolver, maxDepth: opts.maxDepth, writable: true, reuse: opts.reuse });
    try {
      if (opts.scrub !== false) await scrubUnmarkedSectors(chain.leaf);
    } catch (err) {
      await chain.abandon();
      throw err;
    }
    return new WritableVhdDevice(chain);
  }

  write(data: Buffer, offset: number, opts: WriteOptions = {}): Promise<void> {
    return this.track(async () => {
      checkRange(offset, data.length, this.size);
      await this.writer.write(data, offset);
      if (opts.fua) await this.writer.flush();
    });
  }

  flush(): Promise<void> {
    return this.track(() => this.writer.flush());
  }

  /**
   * Writes zeros where some image holds data (in block-sized pieces from one
   * shared zero buffer); a range no image holds already reads as zero. Nothing
   * is deallocated, so `mayTrim` changes nothing; `fast` refuses any range
   * that would need writing.
   */
  zero(offset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
    return this.track(async () => {
      checkRange(offset, length, this.size);
      const runs = await this.heldRuns(offset, length);
      if (runs.length > 0 && opts.fast) throw new DeviceError('ENOTSUP', 'range holds data: zeroing it means writing');
      const zeros = this.writer.zeroBlock;
      for (const [from, to] of runs) {
        for (let pos = from; pos < to; ) {
          const n = Math.min(to - pos, zeros.length - (pos % zeros.length));
          await this.writer.write(zeros.subarray(0, n), pos);
          pos += n;
        }
      }
      if (opts.fua && runs.length > 0) await this.writer.flush();
    });
  }

  /** Byte ranges within [offset, offset+length), one per block at most, where some image holds a sector. */
  private async heldRuns(offset: number, length: number): Promise<Array<[number, number]>> {
    const runs: Array<[number, number]> = [];
    const blockSize = this.chain.leaf.blockSize;
    const spb = this.chain.leaf.sectorsPerBlock;
    for (let pos = offset; pos < offset + length; ) {
      const block = Math.floor(pos / blockSize);
      const end = Math.min(offset + length, (block + 1) * blockSize);
      const held = await heldSectors(this.chain, block, Math.floor(pos / SECTOR) - block * spb, Math.ceil(end / SECTOR) - block * spb);
      if (held !== 'none') runs.push([pos, end]);
      pos = end;
    }
    return runs;
  }

  protected override async finish(durable = true): Promise<void> {
    await this.writer.finish(durable);
  }
}

function checkRange(offset: number, length: number, size: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new DeviceError('EINVAL', `range ${offset}+${length} is outside the device (${size} bytes)`);
  }
}

const NO_SPACE = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);

function toDeviceError(err: unknown): unknown {
  if (err instanceof DeviceError) return err;
  if (err instanceof VhdError) {
    // A device (LV) without room for another block is out of space, not a bad request.
    if (err.kind === 'invalid-argument' && /too small/.test(err.message)) return new DeviceError('ENOSPC', err.message);
    return new DeviceError(err.kind === 'invalid-argument' ? 'EINVAL' : 'EIO', err.message);
  }
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code && NO_SPACE.has(code)) return new DeviceError('ENOSPC', (err as Error).message);
  return new DeviceError('EIO', err instanceof Error ? err.message : String(err));
}
