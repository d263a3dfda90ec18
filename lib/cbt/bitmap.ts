/**
 * Operations on CBT bitmaps (one bit per 64 KiB block, LSB first within a
 * byte, as the log stores them) and the forms others need: byte ranges to
 * read, and xapi's base64 string.
 */
import { bitmapBytes, blockCount, CBT_BLOCK_SIZE, type CbtLog } from './log-format.js';

export function isSet(bitmap: Buffer, block: number): boolean {
  return (bitmap[block >> 3] & (1 << (block & 7))) !== 0;
}

/** Sets the bits of blocks [first, last]; true if any was clear. */
export function setBlocks(bitmap: Buffer, first: number, last: number): boolean {
  let changed = false;
  for (let b = first; b <= last; b++) {
    const mask = 1 << (b & 7);
    if ((bitmap[b >> 3] & mask) === 0) {
      bitmap[b >> 3] |= mask;
      changed = true;
    }
  }
  return changed;
}

/** The blocks touched by bytes [offset, offset+length). */
export function blocksOf(offset: number, length: number): [first: number, last: number] {
  return [Math.floor(offset / CBT_BLOCK_SIZE), Math.floor((offset + Math.max(length, 1) - 1) / CBT_BLOCK_SIZE)];
}

/** Every block of a disk of `size` bytes set (the bits past its end stay clear, as a fresh log has them). */
export function allSet(size: number): Buffer {
  const out = Buffer.alloc(bitmapBytes(size));
  const blocks = blockCount(size);
  if (blocks > 0) setBlocks(out, 0, blocks - 1);
  return out;
}

/** `into |= from`, `from` zero-extended (or cut) to `into`'s length. */
export function orInto(into: Buffer, from: Buffer): void {
  const n = Math.min(into.length, from.length);
  for (let i = 0; i < n; i++) into[i] |= from[i];
}

/** What the log says changed: its bits, or every block when it was not closed cleanly (a crash may have lost marks). */
export function changedOf(log: CbtLog): Buffer {
  return log.consistent ? Buffer.from(log.bitmap) : allSet(log.size);
}

export function countSet(bitmap: Buffer): number {
  let n = 0;
  for (const byte of bitmap) for (let v = byte; v; v &= v - 1) n++;
  return n;
}

/** Bytes of the disk covered by set bits, adjacent blocks merged into one range, clipped to `size`. */
export function changedRanges(bitmap: Buffer, size: number): { offset: number; length: number }[] {
  const out: { offset: number; length: number }[] = [];
  const blocks = blockCount(size);
  for (let b = 0; b < blocks; b++) {
    if (!isSet(bitmap, b)) continue;
    let end = b;
    while (end + 1 < blocks && isSet(bitmap, end + 1)) end++;
    const offset = b * CBT_BLOCK_SIZE;
    out.push({ offset, length: Math.min((end + 1) * CBT_BLOCK_SIZE, size) - offset });
    b = end;
  }
  return out;
}

/**
 * xapi's form of a changed-block bitmap (`VDI.list_changed_blocks`): base64 of
 * the bytes with each byte's bits reversed, so block i is the i-th bit counting
 * from the most significant bit of the first byte.
 */
export function toXapiBase64(bitmap: Buffer): string {
  const out = Buffer.alloc(bitmap.length);
  for (let i = 0; i < bitmap.length; i++) out[i] = reverseBits(bitmap[i]);
  return out.toString('base64');
}

export function fromXapiBase64(text: string): Buffer {
  const raw = Buffer.from(text, 'base64');
  for (let i = 0; i < raw.length; i++) raw[i] = reverseBits(raw[i]);
  return raw;
}

function reverseBits(b: number): number {
  let r = 0;
  for (let i = 0; i < 8; i++) if (b & (1 << i)) r |= 0x80 >> i;
  return r;
}
