/**
 * A chain's allocation map as NBD `base:allocation` extents, from the BATs and
 * sector bitmaps alone (no data is read): a sector some image holds is data,
 * a sector no image holds is a hole that reads as zero.
 */
import type { Extent } from '../nbd/block-device.js';
import { forEachSetRun } from '../vhd/format/bitmap.js';
import { SECTOR } from '../vhd/format/constants.js';
import type { VhdChain } from '../vhd/index.js';

export interface ExtentLimits {
  /** Stop after this many extents (a short answer is legal). */
  maxExtents: number;
  /** Stop after this many bytes. */
  maxBytes: number;
}

export const DEFAULT_EXTENT_LIMITS: ExtentLimits = { maxExtents: 1024, maxBytes: 1024 * 1024 * 1024 };

/** Extents covering [offset, offset+length) from its start, possibly fewer bytes; every boundary but the last is sector-aligned. */
export async function chainExtents(chain: VhdChain, offset: number, length: number, limits = DEFAULT_EXTENT_LIMITS): Promise<Extent[]> {
  const end = Math.min(offset + length, chain.virtualSize, offset + limits.maxBytes);
  const out: Extent[] = [];
  let pos = offset;
  const push = (to: number, data: boolean): boolean => {
    const last = out[out.length - 1];
    if (last && last.hole === !data) last.length += to - pos;
    else {
      if (out.length >= limits.maxExtents) return false;
      out.push({ length: to - pos, hole: !data, zero: !data });
    }
    pos = to;
    return true;
  };
  const spb = chain.leaf.sectorsPerBlock;
  const blockSize = chain.leaf.blockSize;
  while (pos < end) {
    const block = Math.floor(pos / blockSize);
    const blockEnd = Math.min(end, (block + 1) * blockSize);
    const s0 = Math.floor(pos / SECTOR) - block * spb;
    const s1 = Math.ceil(blockEnd / SECTOR) - block * spb;
    const held = await heldSectors(chain, block, s0, s1);
    let ok = true;
    if (held === 'none') ok = push(blockEnd, false);
    else if (held === 'all') ok = push(blockEnd, true);
    else {
      for (let k = 0; k < held.length && ok; ) {
        let e = k + 1;
        while (e < held.length && held[e] === held[k]) e++;
        const to = e === held.length ? blockEnd : (block * spb + s0 + e) * SECTOR;
        ok = push(to, held[k] === 1);
        k = e;
      }
    }
    if (!ok) break;
  }
  return out;
}

/** Which of sectors [s0, s1) of a block some image of the chain holds. */
export async function heldSectors(chain: VhdChain, block: number, s0: number, s1: number): Promise<'none' | 'all' | Uint8Array> {
  let held: Uint8Array | undefined;
  for (const img of chain.images) {
    if (block < img.blockCount && img.hasBlock(block)) {
      if (img.isBlockFull(block)) return 'all';
      const bm = (await img.readBitmap(block))!;
      forEachSetRun(bm, s0, s1, (s, e) => {
        held ??= new Uint8Array(s1 - s0);
        held.fill(1, s - s0, e - s0);
      });
      if (held && held.every((x) => x === 1)) return 'all';
    }
    if (!img.isDifferencing) break;
  }
  return held ?? 'none';
}
