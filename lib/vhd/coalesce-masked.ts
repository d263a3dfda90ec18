/**
 * The copy of given sectors only (a live leaf's writes since the last copy: a
 * few runs in many blocks) through this process, one block at a time as a
 * unit that several may run at once: the child's bitmap is read before its
 * data (a live leaf's sector is never copied older than its bit), a block the
 * parent has gets its runs in place and then its bitmap (data before the bit
 * that makes it read), a block new to the parent is handed back whole (the
 * caller appends it, then its BAT entry after a barrier).
 */
import { allSet, countSet, noneSet } from './format/bitmap.js';
import { SECTOR } from './format/constants.js';
import type { BlockBuffer, VhdImage } from './image.js';
import { markRuns, maskedBitmap, mergeNearRuns, zeroClearSectors } from './sector-runs.js';

export interface MaskedBlockCopy {
  index: number;
  /** Sectors copied (with those the child holds between two near runs). */
  sectors: number;
  /** The block as the parent gets it, when new to the parent: for the caller to append. */
  fresh?: BlockBuffer;
  /** The parent's block is now full (for the batmap). */
  full: boolean;
}

/** The blocks of `sectors` the child has, in its on-disk order (reads stream). */
export function maskedBlocks(child: VhdImage, sectors: ReadonlyMap<number, Uint8Array>): number[] {
  return [...sectors.keys()].filter((i) => i < child.blockCount && child.hasBlock(i)).sort((a, b) => child.bitmapOffset(a) - child.bitmapOffset(b));
}

/**
 * Copies the sectors `only` asks for of block `i`; undefined when the child
 * holds none of them. `take` gives a buffer of bitmap + block size for a new
 * parent block (the caller owns it once handed back).
 */
export async function copyMaskedBlock(child: VhdImage, parent: VhdImage, i: number, only: Uint8Array, take: () => Buffer): Promise<MaskedBlockCopy | undefined> {
  const spb = child.sectorsPerBlock;
  if (!parent.hasBlock(i)) {
    const c = await child.readBlock(i, take());
    if (child.isBlockFull(i)) c.bitmap.fill(0xff);
    c.bitmap.set(maskedBitmap(c.bitmap, only));
    const sectors = countSet(c.bitmap, spb);
    if (sectors === 0) return undefined;
    if (sectors !== spb) zeroClearSectors(c.bitmap, c.data, spb);
    return { index: i, sectors, fresh: c, full: sectors === spb };
  }
  const [held, parentBitmap] = await Promise.all([
    child.isBlockFull(i) ? Buffer.alloc(child.bitmapBytes, 0xff) : child.readBitmap(i).then((b) => Buffer.from(b!)),
    parent.isBlockFull(i) ? Buffer.alloc(parent.bitmapBytes, 0xff) : parent.readBitmap(i).then((b) => Buffer.from(b!)),
  ]);
  const wanted = maskedBitmap(held, only);
  if (noneSet(wanted, spb)) return undefined;
  const runs = mergeNearRuns(wanted, held, spb);
  // Every run read and written at once: scattered small runs cost a round trip each when awaited in turn.
  await Promise.all(
    runs.map(async ([s, e]) => {
      const data = Buffer.allocUnsafe((e - s) * SECTOR);
      await child.readData(i, s * SECTOR, data);
      await parent.writeData(i, s * SECTOR, data);
    }),
  );
  const sectors = markRuns(parentBitmap, runs);
  await parent.writeBitmap(i, parentBitmap);
  return { index: i, sectors, full: allSet(parentBitmap, spb) };
}
