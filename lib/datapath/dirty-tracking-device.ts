/**
 * Which sectors of a served VDI were written since a point: what a live
 * leaf-coalesce copies again after each round. A wrapper outside the
 * PausableDevice, so the record survives pause/refresh (the chain beneath may
 * change; what the client wrote does not). Kept per block as a sector bitmap,
 * so a record costs at most a VHD bitmap per block written.
 *
 * A range is marked when a write to it COMPLETES (whether it succeeded or
 * not): a write finished before `since()` is in the image before the caller
 * reads it, one finishing after is in the next answer. A torn read by the
 * caller is therefore always read again later.
 */
import type { BlockDevice, WriteOptions, ZeroOptions } from '../nbd/index.js';
import { PassthroughDevice } from '../nbd/passthrough-device.js';
import { forEachSetRun, setBits } from '../vhd/format/bitmap.js';

const SECTOR = 512;

/** Runs of written sectors: [first sector, sector count], in order. */
export type SectorRuns = [number, number][];

export class DirtyTrackingDevice extends PassthroughDevice {
  private session: { token: string; blocks: Map<number, Uint8Array> } | undefined;
  private sessions = 0;

  constructor(
    inner: BlockDevice,
    /** The blocks the record is kept in (the VHD block size). */
    readonly blockSize: number,
  ) {
    super(inner);
  }

  private get sectorsPerBlock(): number {
    return this.blockSize / SECTOR;
  }

  /** Starts (or restarts) recording; the token names this record for `since`. */
  start(): string {
    this.session = { token: `${process.pid}.${Date.now()}.${++this.sessions}`, blocks: new Map() };
    return this.session.token;
  }

  /** The sectors written since `start` or the previous `since`, and a fresh record from now on. */
  since(token: string): SectorRuns {
    if (!this.session || this.session.token !== token) throw new Error(`no write record ${token} (the VDI was served again or recording restarted)`);
    const spb = this.sectorsPerBlock;
    const runs: SectorRuns = [];
    for (const block of [...this.session.blocks.keys()].sort((a, b) => a - b)) {
      forEachSetRun(this.session.blocks.get(block)!, 0, spb, (s, e) => {
        const last = runs.at(-1);
        if (last && last[0] + last[1] === block * spb + s) last[1] += e - s;
        else runs.push([block * spb + s, e - s]);
      });
    }
    this.session.blocks = new Map();
    return runs;
  }

  /** Stops recording (nobody asks any more). */
  stop(): void {
    this.session = undefined;
  }

  override write(data: Buffer, offset: number, opts?: WriteOptions): Promise<void> {
    return this.marking(offset, data.length, () => this.inner.write!(data, offset, opts));
  }
  override zero(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.marking(offset, length, () => this.inner.zero!(offset, length, opts));
  }
  override trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.marking(offset, length, () => this.inner.trim!(offset, length, opts));
  }

  private async marking(offset: number, length: number, op: () => Promise<void>): Promise<void> {
    try {
      await op();
    } finally {
      if (this.session && length > 0) this.mark(Math.floor(offset / SECTOR), Math.ceil((offset + length) / SECTOR));
    }
  }

  /** Sectors [from, to). */
  private mark(from: number, to: number): void {
    const spb = this.sectorsPerBlock;
    const blocks = this.session!.blocks;
    for (let s = from; s < to; ) {
      const block = Math.floor(s / spb);
      const end = Math.min(to, (block + 1) * spb);
      let map = blocks.get(block);
      if (!map) blocks.set(block, (map = new Uint8Array(spb / 8)));
      setBits(map, s - block * spb, end - block * spb);
      s = end;
    }
  }
}
