/** Runs of sectors in a block's bitmap, as the coalesce copies and marks them. */
import { forEachSetRun } from './format/bitmap.js';
import { SECTOR } from './format/constants.js';

/** The child's bits that the mask asks for: a copy of `held`, cleared where `only` is clear. */
export function maskedBitmap(held: Uint8Array, only: Uint8Array): Buffer {
  const wanted = Buffer.from(held);
  for (let b = 0; b < wanted.length; b++) wanted[b] &= only[b] ?? 0;
  return wanted;
}

/** The maximal runs of set bits among the first `spb`, as [start, end) sector pairs. */
export function setRuns(bitmap: Uint8Array, spb: number): [number, number][] {
  const runs: [number, number][] = [];
  forEachSetRun(bitmap, 0, spb, (s, e) => runs.push([s, e]));
  return runs;
}

/**
 * The runs of `wanted`, where two runs are one when every sector between them,
 * at most 128 (64 KiB), is one the child holds (`held`): copying a sector the
 * child covers never changes what the chain reads, and one write beats two.
 */
export function mergeNearRuns(wanted: Uint8Array, held: Uint8Array, spb: number): [number, number][] {
  const runs: [number, number][] = [];
  forEachSetRun(wanted, 0, spb, (s, e) => {
    const last = runs.at(-1);
    if (last && s - last[1] <= 128 && allHeld(held, last[1], s)) last[1] = e;
    else runs.push([s, e]);
  });
  return runs;
}

function allHeld(held: Uint8Array, from: number, to: number): boolean {
  for (let s = from; s < to; s++) if ((held[s >> 3]! & (0x80 >> (s & 7))) === 0) return false;
  return true;
}

/** Sets the bits of every run in `bitmap`; returns how many sectors the runs hold. */
export function markRuns(bitmap: Uint8Array, runs: readonly [number, number][]): number {
  let sectors = 0;
  for (const [s, e] of runs) {
    for (let b = s >> 3; b <= (e - 1) >> 3; b++) bitmap[b] |= rangeMask(b, s, e);
    sectors += e - s;
  }
  return sectors;
}

/** Bits of byte `b` that fall within sector range [s, e). */
function rangeMask(b: number, s: number, e: number): number {
  let mask = 0;
  for (let bit = Math.max(s, b * 8); bit < Math.min(e, b * 8 + 8); bit++) mask |= 0x80 >> (bit & 7);
  return mask;
}

/** A new parent block's clear sectors must read as zero: the data under them is zeroed. */
export function zeroClearSectors(bitmap: Buffer, data: Buffer, spb: number): void {
  let prevEnd = 0;
  forEachSetRun(bitmap, 0, spb, (s, e) => {
    if (s > prevEnd) data.fill(0, prevEnd * SECTOR, s * SECTOR);
    prevEnd = e;
  });
  if (prevEnd < spb) data.fill(0, prevEnd * SECTOR, spb * SECTOR);
}
