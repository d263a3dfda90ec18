/**
 * Zeroing data left in sectors whose bitmap bit is clear. A writer sets a bit
 * only after the sector's data is on disk, so a process killed between the two
 * writes leaves bytes under a clear bit: readers ignore them, but the format
 * (and `check`) wants such sectors zero, and a later partial bitmap update must
 * not expose them. Only partial blocks can hold such sectors.
 */
import { forEachSetRun } from './format/bitmap.js';
import { SECTOR } from './format/constants.js';
import type { VhdImage } from './image.js';

/** Zeroes every non-zero sector under a clear bit in `image` (opened writable); returns how many, synced when > 0. */
export async function scrubUnmarkedSectors(image: VhdImage): Promise<number> {
  const spb = image.sectorsPerBlock;
  const buf = Buffer.allocUnsafe(image.blockSize);
  const zeros = Buffer.alloc(image.blockSize);
  let scrubbed = 0;
  for (let i = 0; i < image.blockCount; i++) {
    if (!image.hasBlock(i) || image.isBlockFull(i)) continue;
    const bitmap = (await image.readBitmap(i))!;
    const clear: Array<[number, number]> = [];
    let prev = 0;
    forEachSetRun(bitmap, 0, spb, (s, e) => {
      if (s > prev) clear.push([prev, s]);
      prev = e;
    });
    if (prev < spb) clear.push([prev, spb]);
    for (const [from, to] of clear) {
      const part = buf.subarray(from * SECTOR, to * SECTOR);
      await image.readData(i, from * SECTOR, part);
      if (part.equals(zeros.subarray(0, part.length))) continue;
      for (let s = from; s < to; s++) {
        const sector = part.subarray((s - from) * SECTOR, (s - from + 1) * SECTOR);
        if (sector.equals(zeros.subarray(0, SECTOR))) continue;
        await image.writeData(i, s * SECTOR, zeros.subarray(0, SECTOR));
        scrubbed++;
      }
    }
  }
  if (scrubbed > 0) await image.sync();
  return scrubbed;
}
