/**
 * A sparse in-memory disk: storage is allocated in fixed chunks on first
 * write, so its extents (holes vs data) are real. For tests and demos.
 */
import { DeviceError, type BlockDevice, type Extent, type ZeroOptions } from './block-device.js';

export interface MemoryDeviceOptions {
  /** Allocation granularity (power of two, >= 512). Default 64 KiB. */
  chunkSize?: number;
  /** Default true: one state behind every connection. */
  multiConn?: boolean;
  preferredBlockSize?: number;
}

export class MemoryDevice implements BlockDevice {
  readonly chunkSize: number;
  readonly multiConn: boolean;
  readonly preferredBlockSize: number | undefined;
  private readonly chunks = new Map<number, Buffer>();
  private isClosed = false;
  /** How many times each operation ran (tests assert on them). */
  readonly calls = { read: 0, write: 0, flush: 0, trim: 0, zero: 0, extents: 0 };

  constructor(
    readonly size: number,
    options: MemoryDeviceOptions = {},
  ) {
    const chunkSize = options.chunkSize ?? 64 * 1024;
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`bad size ${size}`);
    if (chunkSize < 512 || (chunkSize & (chunkSize - 1)) !== 0) throw new RangeError(`chunk size ${chunkSize} is not a power of two >= 512`);
    this.chunkSize = chunkSize;
    this.multiConn = options.multiConn ?? true;
    this.preferredBlockSize = options.preferredBlockSize;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Bytes of chunks holding data. */
  get allocatedBytes(): number {
    return this.chunks.size * this.chunkSize;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    this.check(offset, buf.length);
    this.calls.read++;
    this.forEachPiece(offset, buf.length, (chunk, at, n, done) => {
      if (chunk) chunk.copy(buf, done, at, at + n);
      else buf.fill(0, done, done + n);
    });
  }

  async write(data: Buffer, offset: number): Promise<void> {
    this.check(offset, data.length);
    this.calls.write++;
    this.forEachPiece(offset, data.length, (_chunk, at, n, done, index) => {
      data.copy(this.chunkAt(index), at, done, done + n);
    });
  }

  async flush(): Promise<void> {
    this.check(0, 0);
    this.calls.flush++;
  }

  async trim(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    this.calls.trim++;
    this.punch(offset, length);
  }

  async zero(offset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
    this.check(offset, length);
    this.calls.zero++;
    if (opts.mayTrim) {
      this.punch(offset, length);
      return;
    }
    this.forEachPiece(offset, length, (_chunk, at, n, _done, index) => this.chunkAt(index).fill(0, at, at + n));
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length);
    this.calls.extents++;
    const out: Extent[] = [];
    this.forEachPiece(offset, length, (chunk, _at, n) => {
      const hole = chunk === undefined;
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length += n;
      else out.push({ length: n, hole, zero: hole });
    });
    return out;
  }

  async close(): Promise<void> {
    this.isClosed = true;
  }

  /** Drops whole chunks in the range and zeroes the partial ends. */
  private punch(offset: number, length: number): void {
    this.forEachPiece(offset, length, (chunk, at, n, _done, index) => {
      if (!chunk) return;
      if (n === this.chunkSize) this.chunks.delete(index);
      else chunk.fill(0, at, at + n);
    });
  }

  private chunkAt(index: number): Buffer {
    let chunk = this.chunks.get(index);
    if (!chunk) {
      chunk = Buffer.alloc(this.chunkSize);
      this.chunks.set(index, chunk);
    }
    return chunk;
  }

  /** Calls `fn` once per chunk the range touches: (chunk or undefined, offset in chunk, bytes, bytes before, chunk index). */
  private forEachPiece(offset: number, length: number, fn: (chunk: Buffer | undefined, at: number, n: number, done: number, index: number) => void): void {
    let done = 0;
    while (done < length) {
      const pos = offset + done;
      const index = Math.floor(pos / this.chunkSize);
      const at = pos - index * this.chunkSize;
      const n = Math.min(this.chunkSize - at, length - done);
      fn(this.chunks.get(index), at, n, done, index);
      done += n;
    }
  }

  private check(offset: number, length: number): void {
    if (this.isClosed) throw new DeviceError('ESHUTDOWN', 'memory device is closed');
    if (offset < 0 || length < 0 || offset + length > this.size) throw new DeviceError('EINVAL', `range ${offset}+${length} outside ${this.size}`);
  }
}
