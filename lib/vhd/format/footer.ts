/** The 512-byte VHD footer (at the end of the file; a copy at offset 0 for dynamic disks). */
import { vhdChecksum } from './checksum.js';
import {
  CREATOR_APP,
  CREATOR_VERSION,
  DiskType,
  FEATURES_RESERVED,
  FILE_FORMAT_VERSION,
  FOOTER_COOKIE,
  FOOTER_SIZE,
  HEADER_OFFSET,
} from './constants.js';
import { Geometry, geometryFor } from './geometry.js';

export interface Footer {
  features: number;
  fileFormatVersion: number;
  /** Offset of the dynamic header; all ones (as a bigint) for fixed disks. */
  dataOffset: bigint;
  timestamp: number;
  creatorApp: string;
  creatorVersion: number;
  creatorHostOs: number;
  originalSize: number;
  currentSize: number;
  geometry: Geometry;
  diskType: DiskType;
  checksum: number;
  uuid: Buffer; // 16 bytes
  savedState: number;
  hidden: number;
}

// Field offsets (total 512 bytes).
const O = {
  cookie: 0, // 8
  features: 8, // u32
  version: 12, // u32
  dataOffset: 16, // u64
  timestamp: 24, // u32
  creatorApp: 28, // 4 chars
  creatorVersion: 32, // u32
  creatorHostOs: 36, // u32
  originalSize: 40, // u64
  currentSize: 48, // u64
  cylinders: 56, // u16
  heads: 58, // u8
  sectorsPerTrack: 59, // u8
  diskType: 60, // u32
  checksum: 64, // u32
  uuid: 68, // 16
  savedState: 84, // u8
  hidden: 85, // u8
  reserved: 86, // 426 bytes, to 512
} as const;

export function newFooter(opts: {
  size: number;
  diskType: DiskType;
  uuid: Buffer;
  timestamp: number;
}): Footer {
  return {
    features: FEATURES_RESERVED,
    fileFormatVersion: FILE_FORMAT_VERSION,
    dataOffset: BigInt(HEADER_OFFSET),
    timestamp: opts.timestamp,
    creatorApp: CREATOR_APP,
    creatorVersion: CREATOR_VERSION,
    creatorHostOs: 0,
    originalSize: opts.size,
    currentSize: opts.size,
    geometry: geometryFor(opts.size),
    diskType: opts.diskType,
    checksum: 0,
    uuid: opts.uuid,
    savedState: 0,
    hidden: 0,
  };
}

export function encodeFooter(f: Footer): Buffer {
  const b = Buffer.alloc(FOOTER_SIZE);
  b.write(FOOTER_COOKIE, O.cookie, 'latin1');
  b.writeUInt32BE(f.features, O.features);
  b.writeUInt32BE(f.fileFormatVersion, O.version);
  b.writeBigUInt64BE(f.dataOffset, O.dataOffset);
  b.writeUInt32BE(f.timestamp >>> 0, O.timestamp);
  b.write(f.creatorApp.padEnd(4, '\0').slice(0, 4), O.creatorApp, 'latin1');
  b.writeUInt32BE(f.creatorVersion, O.creatorVersion);
  b.writeUInt32BE(f.creatorHostOs, O.creatorHostOs);
  b.writeBigUInt64BE(BigInt(f.originalSize), O.originalSize);
  b.writeBigUInt64BE(BigInt(f.currentSize), O.currentSize);
  b.writeUInt16BE(f.geometry.cylinders, O.cylinders);
  b.writeUInt8(f.geometry.heads, O.heads);
  b.writeUInt8(f.geometry.sectorsPerTrack, O.sectorsPerTrack);
  b.writeUInt32BE(f.diskType, O.diskType);
  f.uuid.copy(b, O.uuid, 0, 16);
  b.writeUInt8(f.savedState, O.savedState);
  b.writeUInt8(f.hidden, O.hidden);
  f.checksum = vhdChecksum(b, O.checksum);
  b.writeUInt32BE(f.checksum, O.checksum);
  return b;
}

/** Decodes a footer, or returns the reason it is not a valid one. */
export function decodeFooter(b: Buffer): Footer | string {
  if (b.length < FOOTER_SIZE) return 'footer truncated';
  if (b.toString('latin1', O.cookie, O.cookie + 8) !== FOOTER_COOKIE) return 'bad footer cookie';
  const checksum = b.readUInt32BE(O.checksum);
  const expected = vhdChecksum(b.subarray(0, FOOTER_SIZE), O.checksum);
  if (checksum !== expected) {
    return `footer checksum 0x${checksum.toString(16)} != computed 0x${expected.toString(16)}`;
  }
  const originalSize = b.readBigUInt64BE(O.originalSize);
  const currentSize = b.readBigUInt64BE(O.currentSize);
  if (currentSize > BigInt(Number.MAX_SAFE_INTEGER) || originalSize > BigInt(Number.MAX_SAFE_INTEGER)) {
    return 'footer size out of range';
  }
  return {
    features: b.readUInt32BE(O.features),
    fileFormatVersion: b.readUInt32BE(O.version),
    dataOffset: b.readBigUInt64BE(O.dataOffset),
    timestamp: b.readUInt32BE(O.timestamp),
    creatorApp: b.toString('latin1', O.creatorApp, O.creatorApp + 4),
    creatorVersion: b.readUInt32BE(O.creatorVersion),
    creatorHostOs: b.readUInt32BE(O.creatorHostOs),
    originalSize: Number(originalSize),
    currentSize: Number(currentSize),
    geometry: {
      cylinders: b.readUInt16BE(O.cylinders),
      heads: b.readUInt8(O.heads),
      sectorsPerTrack: b.readUInt8(O.sectorsPerTrack),
    },
    diskType: b.readUInt32BE(O.diskType),
    checksum,
    uuid: Buffer.from(b.subarray(O.uuid, O.uuid + 16)),
    savedState: b.readUInt8(O.savedState),
    hidden: b.readUInt8(O.hidden),
  };
}

export const FOOTER_HIDDEN_OFFSET = O.hidden;
