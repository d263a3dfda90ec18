/**
 * Changed-block tracking in the datapath, as blktap's `log` driver does it
 * above the chain: before a write, zero or trim reaches the image, the bits of
 * the 64 KiB blocks it touches are set in the VDI's CBT log and made durable,
 * so the log never lists fewer blocks than the image holds changed.
 *
 * While served the log is marked inconsistent; a clean close marks it
 * consistent again after the image is flushed. A log found inconsistent at
 * open was left by a datapath that died: it is settled to "every block
 * changed" first (a crash may have lost marks for writes that reached the image).
 *
 * Marks are written in place (a few bitmap bytes) and synced once for all
 * the writes that set new bits meanwhile; a write whose blocks are already
 * marked waits only for the sync that covers them, if one is still running.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { blocksOf, setBlocks } from '../cbt/bitmap.js';
import { CBT_HEADER_SIZE, type CbtLog } from '../cbt/log-format.js';
import { growTo, readLog, settleInconsistent, writeLog } from '../cbt/log-file.js';
import { DeviceError, type BlockDevice, type WriteOptions, type ZeroOptions } from '../nbd/block-device.js';
import { PassthroughDevice } from '../nbd/passthrough-device.js';
import type { ChainOptions, VhdImage } from '../vhd/index.js';
import { openVhdDevice, type VhdDevice } from './vhd-device.js';

/**
 * What a served VDI reads and writes: its chain (a VhdDevice), behind its CBT
 * log when it has one. A pause settles it (final on disk, images kept open);
 * the chain opened after the pause may take its images over, and release()
 * closes the rest.
 */
export type ServedDevice = BlockDevice & Pick<VhdDevice, 'settle' | 'release' | 'abandon' | 'images' | 'awaitsBat' | 'batPending' | 'allocationsDone'>;

export class CbtDevice extends PassthroughDevice {
  /** Bytes of the bitmap changed since the last write to the file, [lo, hi). */
  private dirtyLo = Infinity;
  private dirtyHi = 0;
  /** The sync running now, and the one queued behind it for bits set meanwhile. */
  private running: Promise<void> | undefined;
  private queued: Promise<void> | undefined;
  private closed = false;
  /** Set by settle(): the log is consistent on disk and is never written by this device again. */
  private settling: Promise<void> | undefined;
  /** A mark that could not be made durable: from then on no write passes (it could go unlisted). */
  private broken: Error | undefined;

  private constructor(
    private readonly chain: VhdDevice,
    private readonly logPath: string,
    private readonly log: CbtLog,
    private readonly fh: FileHandle,
  ) {
    super(chain);
  }

  /** Wraps `inner` (a writable chain) with its log at `logPath`, marked inconsistent before the first write. */
  static async open(inner: VhdDevice, logPath: string): Promise<CbtDevice> {
    const log = await readLog(logPath);
    settleInconsistent(log); // left open by a datapath that died
    growTo(log, inner.size); // a resize the verbs did not reach the log with
    log.consistent = false;
    await writeLog(logPath, log);
    const fh = await open(logPath, 'r+');
    return new CbtDevice(inner, logPath, log, fh);
  }

  override async write(data: Buffer, offset: number, opts?: WriteOptions): Promise<void> {
    await this.mark(offset, data.length);
    return super.write(data, offset, opts);
  }

  override async zero(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    await this.mark(offset, length);
    return super.zero(offset, length, opts);
  }

  override async trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    await this.mark(offset, length);
    return super.trim(offset, length, opts);
  }

  get images(): readonly VhdImage[] {
    return this.chain.images;
  }

  awaitsBat(blocks: Iterable<number>): boolean {
    return this.chain.awaitsBat(blocks);
  }

  get batPending(): boolean {
    return this.chain.batPending;
  }

  allocationsDone(ms: number): Promise<void> {
    return this.chain.allocationsDone(ms);
  }

  /**
   * For a pause: the chain settled (VhdDevice.settle), the marks durable, then
   * the log marked consistent, as a close leaves it (a snapshot's rotation
   * reads it next). Nothing writes the log again: close() and release() only
   * close handles. `durable`: as VhdDevice.settle (the marks are durable before each write anyway).
   */
  settle(opts: { durable?: boolean } = {}): Promise<void> {
    this.settling ??= (async () => {
      await this.chain.settle(opts);
      await this.queued;
      await this.running;
      this.log.consistent = true;
      await writeLog(this.logPath, this.log);
      // A log on an LV is closed with the chain (VhdDevice.settle): another host may deactivate or the master rewrite it meanwhile.
      if (this.chain.onDevices && !this.closed) {
        this.closed = true;
        await this.fh.close();
      }
    })();
    return this.settling;
  }

  /** After settle(): the log's handle and the chain's images not in `keep` closed, nothing written. */
  async release(keep?: ReadonlySet<VhdImage>): Promise<void> {
    if (!this.settling) throw new Error('release needs a settled device (settle() first)');
    if (this.closed) return;
    this.closed = true;
    try {
      await this.chain.release(keep);
    } finally {
      await this.fh.close();
    }
  }

  /** Never served (its opener gave up): the log consistent again, the chain abandoned (VhdDevice.abandon). */
  async abandon(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.chain.abandon();
    } finally {
      await this.fh.close();
    }
    this.log.consistent = true;
    await writeLog(this.logPath, this.log);
  }

  /** The image flushed and closed first; only then the log says it is complete. */
  override async close(): Promise<void> {
    if (this.settling) return this.release();
    if (this.closed) return;
    this.closed = true;
    try {
      await super.close();
      await this.queued;
      await this.running;
    } finally {
      await this.fh.close();
    }
    this.log.consistent = true;
    await writeLog(this.logPath, this.log);
  }

  private async mark(offset: number, length: number): Promise<void> {
    if (this.broken) throw this.broken;
    const [first, last] = blocksOf(offset, length);
    if (setBlocks(this.log.bitmap, first, last)) {
      this.dirtyLo = Math.min(this.dirtyLo, first >> 3);
      this.dirtyHi = Math.max(this.dirtyHi, (last >> 3) + 1);
      return this.persist();
    }
    // Already set: by a write whose sync may still be running.
    return this.queued ?? this.running;
  }

  /** Resolves once every bit set before the call is durable. */
  private persist(): Promise<void> {
    if (this.queued) return this.queued;
    if (!this.running) return (this.running = this.syncDirty().finally(() => (this.running = undefined)));
    this.queued = this.running.then(() => {
      if (this.broken) throw this.broken;
      this.queued = undefined;
      return (this.running = this.syncDirty().finally(() => (this.running = undefined)));
    });
    return this.queued;
  }

  private async syncDirty(): Promise<void> {
    const lo = this.dirtyLo;
    const hi = this.dirtyHi;
    this.dirtyLo = Infinity;
    this.dirtyHi = 0;
    if (hi <= lo) return;
    try {
      await this.fh.write(this.log.bitmap, lo, hi - lo, CBT_HEADER_SIZE + lo);
      await this.fh.datasync();
    } catch (err) {
      this.broken = new DeviceError('EIO', `CBT log ${this.logPath} cannot be written: ${(err as Error).message}`);
      throw this.broken;
    }
  }
}

/**
 * The device a served VDI reads and writes: its chain, behind its CBT log when
 * it is writable and has one. `reuse`: parents already open (ChainOptions.reuse).
 */
export async function openServedDevice(
  path: string,
  writable: boolean,
  cbtLog?: string,
  scrub = true,
  reuse?: ChainOptions['reuse'],
): Promise<ServedDevice> {
  if (!writable) return openVhdDevice(path, { reuse });
  const chain = await openVhdDevice(path, { writable: true, scrub, reuse });
  if (cbtLog === undefined) return chain;
  try {
    return await CbtDevice.open(chain, cbtLog);
  } catch (err) {
    await chain.abandon();
    throw err;
  }
}
