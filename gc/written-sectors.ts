/**
 * The sectors of a live leaf still to copy into its parent: what the datapath
 * reported written (as sector runs), kept per VHD block as a sector bitmap,
 * the form the copy takes (CoalesceOptions.sectors).
 */
import { countSet, setBits } from '../lib/vhd/format/bitmap.js';

const SECTOR = 512;

export class WrittenSectors {
  readonly blocks = new Map<number, Uint8Array>();

  constructor(private readonly blockSize: number) {}

  private get spb(): number {
    return this.blockSize / SECTOR;
  }

  /** Adds [first sector, count] runs. */
  add(runs: readonly [number, number][]): void {
    const spb = this.spb;
    for (const [first, count] of runs) {
      for (let s = first; s < first + count; ) {
        const block = Math.floor(s / spb);
        const end = Math.min(first + count, (block + 1) * spb);
        let map = this.blocks.get(block);
        if (!map) this.blocks.set(block, (map = new Uint8Array(spb / 8)));
        setBits(map, s - block * spb, end - block * spb);
        s = end;
      }
    }
  }

  /** The bytes still to copy. */
  get bytes(): number {
    let n = 0;
    for (const map of this.blocks.values()) n += countSet(map, this.spb);
    return n * SECTOR;
  }

  /** The part in these blocks (the ones the leaf's on-disk BAT has), taken out of what is left. */
  take(present: (block: number) => boolean): Map<number, Uint8Array> {
    const out = new Map<number, Uint8Array>();
    for (const [block, map] of this.blocks) {
      if (!present(block)) continue;
      out.set(block, map);
      this.blocks.delete(block);
    }
    return out;
  }

  /** Puts back what a failed copy took. */
  putBack(taken: Map<number, Uint8Array>): void {
    for (const [block, map] of taken) {
      const mine = this.blocks.get(block);
      if (!mine) this.blocks.set(block, map);
      else for (let i = 0; i < map.length; i++) mine[i] |= map[i]!;
    }
  }
}
