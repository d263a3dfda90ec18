/** The crash tests' write workload: rounds of byte-disjoint writes, the same for the same seed in the child and in the test. */
import { BLOCK, Rng } from '../vhd/helpers.js';

export interface PlannedWrite {
  offset: number;
  data: Buffer;
}

export const CRASH_DISK = 16 * 1024 * 1024;
export const FLUSH_EVERY = 3;

/** Round r of seed `seed`: up to 16 writes, disjoint in bytes, often sharing sectors and blocks; unaligned. */
export function crashRound(seed: number, r: number): PlannedWrite[] {
  const rng = new Rng(seed * 100_003 + r);
  const out: PlannedWrite[] = [];
  const taken: Array<[number, number]> = [];
  const hot = [1, 4, 7];
  for (let tries = 0; out.length < 16 && tries < 200; tries++) {
    const length = rng.chance(0.5) ? rng.range(1, 3000) : rng.range(1, 40) * 4096;
    const base = rng.chance(0.6) ? rng.pick(hot) * BLOCK + rng.int(BLOCK) : rng.int(CRASH_DISK);
    const offset = Math.max(0, Math.min(CRASH_DISK - length, base));
    if (taken.some(([a, b]) => offset < b && a < offset + length)) continue;
    taken.push([offset, offset + length]);
    out.push({ offset, data: rng.bytes(length) });
  }
  return out;
}

const FUA_SLOT = 40_000;
export const FUA_SLOTS = Math.floor(CRASH_DISK / FUA_SLOT);

/** FUA mode: write k < FUA_SLOTS goes to its own slot (unaligned, never overlapping). */
export function fuaWrite(seed: number, k: number): PlannedWrite {
  const rng = new Rng(seed * 7919 + k);
  const length = rng.range(1, FUA_SLOT - 1000);
  return { offset: k * FUA_SLOT + rng.range(0, 999), data: rng.bytes(length) };
}
