/**
 * Which blocks of a served VDI were written since a point: what a live
 * leaf-coalesce copies again after each round. A wrapper outside the
 * PausableDevice, so the record survives pause/refresh (the chain beneath may
 * change; what the client wrote does not).
 *
 * A block is marked when a write to it COMPLETES (whether it succeeded or
 * not): a write finished before `since()` is in the image before the caller
 * reads it, one finishing after is in the next answer. A torn read by the
 * caller is therefore always read again later.
 */
import type { BlockDevice, WriteOptions, ZeroOptions } from '../nbd/index.js';
import { PassthroughDevice } from '../nbd/passthrough-device.js';

export class DirtyTrackingDevice extends PassthroughDevice {
  private session: { token: string; blocks: Set<number> } | undefined;
  private sessions = 0;

  constructor(
    inner: BlockDevice,
    /** The granularity of the record (the VHD block size). */
    readonly blockSize: number,
  ) {
    super(inner);
  }

  /** Starts (or restarts) recording; the token names this record for `since`. */
  start(): string {
    this.session = { token: `${process.pid}.${Date.now()}.${++this.sessions}`, blocks: new Set() };
    return this.session.token;
  }

  /** The blocks written since `start` or the previous `since`, and a fresh record from now on. */
  since(token: string): number[] {
    if (!this.session || this.session.token !== token) throw new Error(`no write record ${token} (the VDI was served again or recording restarted)`);
    const blocks = [...this.session.blocks].sort((a, b) => a - b);
    this.session.blocks = new Set();
    return blocks;
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
      const s = this.session;
      if (s && length > 0) for (let b = Math.floor(offset / this.blockSize); b <= Math.floor((offset + length - 1) / this.blockSize); b++) s.blocks.add(b);
    }
  }
}
