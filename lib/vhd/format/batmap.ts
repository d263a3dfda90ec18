/** The batmap (a Xen extension): one bit per block, set when the block is fully allocated. */
import { vhdChecksum } from './checksum.js';
import { BATMAP_COOKIE, BATMAP_VERSION, BLOCK_SIZE, SECTOR } from './constants.js';

export interface BatmapHeader {
  offset: number; // absolute offset of the map (header + 512)
  sizeSectors: number;
  version: number;
  checksum: number;
  marker: number;
}

// Field offsets within the one-sector batmap header.
const O = {
  cookie: 0, // 8
  offset: 8, // u64
  size: 16, // u32 sectors
  version: 20, // u32
  checksum: 24, // u32
  marker: 28, // u8
  keyHash: 29, // 65 bytes (unused here, zero)
} as const;

export function batmapSectors(maxTableEntries: number): number {
  return Math.ceil(Math.ceil(maxTableEntries / 8) / SECTOR);
}

/**
 * One's complement of the byte sum over the sectors blktap sums: those holding
 * floor(virtualSize / 16 MiB) bytes of map, at least one sector. That is not
 * always the whole map: when the size ends a few blocks past a multiple of 8 GiB
 * the last map byte sits in a sector blktap leaves out, and blktap (tapdisk,
 * vhd-util check) refuses a batmap whose checksum it cannot reproduce.
 */
export function batmapChecksum(map: Buffer, virtualSize: number): number {
  return vhdChecksum(map.subarray(0, batmapChecksumBytes(virtualSize)), -8);
}

/** Bytes at the start of the map that the checksum protects. */
export function batmapChecksumBytes(virtualSize: number): number {
  return Math.max(1, Math.ceil(Math.floor(virtualSize / (BLOCK_SIZE * 8)) / SECTOR)) * SECTOR;
}

export function encodeBatmapHeader(h: BatmapHeader): Buffer {
  const b = Buffer.alloc(SECTOR);
  b.write(BATMAP_COOKIE, O.cookie, 'latin1');
  b.writeBigUInt64BE(BigInt(h.offset), O.offset);
  b.writeUInt32BE(h.sizeSectors, O.size);
  b.writeUInt32BE(h.version, O.version);
  b.writeUInt32BE(h.checksum >>> 0, O.checksum);
  b.writeUInt8(h.marker, O.marker);
  return b;
}

export function decodeBatmapHeader(b: Buffer): BatmapHeader | string {
  if (b.length < SECTOR) return 'batmap header truncated';
  if (b.toString('latin1', O.cookie, O.cookie + 8) !== BATMAP_COOKIE) return 'bad batmap cookie';
  const offset = b.readBigUInt64BE(O.offset);
  if (offset > BigInt(Number.MAX_SAFE_INTEGER)) return 'batmap offset out of range';
  return {
    offset: Number(offset),
    sizeSectors: b.readUInt32BE(O.size),
    version: b.readUInt32BE(O.version),
    checksum: b.readUInt32BE(O.checksum),
    marker: b.readUInt8(O.marker),
  };
}

export function newBatmapHeader(headerOffset: number, maxTableEntries: number): BatmapHeader {
  return {
    offset: headerOffset + SECTOR,
    sizeSectors: batmapSectors(maxTableEntries),
    version: BATMAP_VERSION,
    checksum: 0,
    marker: 0,
  };
}
