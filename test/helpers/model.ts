// The in-memory model of what every VDI must read as: a sparse disk of 2 MiB
// blocks (the VHD block size), zero where never written.
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';

export const MiB = 1024 * 1024;
export const BLOCK = 2 * MiB;

export class SparseDisk {
  readonly blocks = new Map<number, Buffer>();
  /** Blocks this disk may change in place; the others are shared with copies (copy-on-write). */
  private readonly owned = new Set<Buffer>();

  constructor(public size: number) {}

  write(offset: number, data: Buffer): void {
    if (offset < 0 || offset + data.length > this.size) throw new RangeError(`write ${offset}+${data.length} beyond ${this.size}`);
    let done = 0;
    while (done < data.length) {
      const at = offset + done;
      const index = Math.floor(at / BLOCK);
      const within = at - index * BLOCK;
      const n = Math.min(BLOCK - within, data.length - done);
      let block = this.blocks.get(index);
      if (!block || !this.owned.has(block)) {
        block = block ? Buffer.from(block) : Buffer.alloc(BLOCK);
        this.blocks.set(index, block);
        this.owned.add(block);
      }
      data.copy(block, within, done, done + n);
      done += n;
    }
  }

  /** `length` bytes at `offset` as the disk reads them. */
  read(offset: number, length: number): Buffer {
    const out = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const at = offset + done;
      const index = Math.floor(at / BLOCK);
      const within = at - index * BLOCK;
      const n = Math.min(BLOCK - within, length - done);
      this.blocks.get(index)?.copy(out, done, within, within + n);
      done += n;
    }
    return out;
  }

  copy(): SparseDisk {
    const d = new SparseDisk(this.size);
    for (const [i, b] of this.blocks) d.blocks.set(i, b);
    this.owned.clear(); // shared from now on: the next write to a block copies it
    return d;
  }

  grow(size: number): void {
    if (size < this.size) throw new RangeError('shrink');
    this.size = size;
  }

  /** The whole disk as raw bytes (small disks only). */
  raw(): Buffer {
    return this.read(0, this.size);
  }

  sha256(): string {
    const h = createHash('sha256');
    const zero = Buffer.alloc(BLOCK);
    for (let at = 0; at < this.size; at += BLOCK) {
      const n = Math.min(BLOCK, this.size - at);
      const b = this.blocks.get(at / BLOCK);
      h.update(b ? b.subarray(0, n) : zero.subarray(0, n));
    }
    return h.digest('hex');
  }
}

/** Deterministic, incompressible-looking bytes (xorshift), distinct per seed. */
export function pattern(seed: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  let i = 0;
  for (; i + 4 <= length; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.writeUInt32LE(x, i);
  }
  for (; i < length; i++) out[i] = (seed + i) & 0xff;
  return out;
}

/** Cheap large data: one 1 MiB pattern per seed, each MiB stamped with its own index so no two MiB are alike. */
export function bigPattern(seed: number, length: number): Buffer {
  const unit = pattern(seed, MiB);
  const out = Buffer.alloc(length);
  for (let at = 0; at < length; at += MiB) {
    unit.copy(out, at, 0, Math.min(MiB, length - at));
    if (at + 16 <= length) out.write(`#${seed}:${at / MiB}#`.padEnd(16, '.'), at, 'latin1');
  }
  return out;
}

/** sha256 of a raw file. */
export async function fileSha256(path: string): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    for await (const chunk of fh.createReadStream()) h.update(chunk as Buffer);
  } finally {
    await fh.close().catch(() => undefined);
  }
  return h.digest('hex');
}
