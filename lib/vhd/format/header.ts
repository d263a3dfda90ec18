/** The 1024-byte dynamic disk header (at offset 512) and its 8 parent locator entries. */
import { vhdChecksum } from './checksum.js';
import {
  BAT_OFFSET,
  BLOCK_SIZE,
  HEADER_COOKIE,
  HEADER_SIZE,
  HEADER_VERSION,
  LOCATOR_COUNT,
} from './constants.js';

export interface LocatorEntry {
  code: number; // platform code: MacX, W2ku, W2ru, or 0 when unused
  dataSpace: number; // as stored (blktap: bytes)
  dataLength: number; // bytes
  dataOffset: number; // absolute file offset of the locator data
}

export interface DynamicHeader {
  dataOffset: bigint; // all ones
  tableOffset: number;
  headerVersion: number;
  maxTableEntries: number;
  blockSize: number;
  checksum: number;
  parentUuid: Buffer; // 16 bytes; zero for a dynamic (base) disk
  parentTimestamp: number;
  parentUnicodeName: string;
  locators: LocatorEntry[]; // always 8 entries
}

// Field offsets (total 1024 bytes).
const O = {
  cookie: 0, // 8
  dataOffset: 8, // u64
  tableOffset: 16, // u64
  headerVersion: 24, // u32
  maxTableEntries: 28, // u32
  blockSize: 32, // u32
  checksum: 36, // u32
  parentUuid: 40, // 16
  parentTimestamp: 56, // u32
  reserved1: 60, // u32
  parentUnicodeName: 64, // 512 bytes UTF-16BE
  locators: 576, // 8 x 24
  reserved2: 768, // 256, to 1024
} as const;
const LOCATOR_ENTRY_SIZE = 24;
const NAME_BYTES = 512;

export function emptyLocator(): LocatorEntry {
  return { code: 0, dataSpace: 0, dataLength: 0, dataOffset: 0 };
}

export function newHeader(maxTableEntries: number): DynamicHeader {
  return {
    dataOffset: 0xffffffffffffffffn,
    tableOffset: BAT_OFFSET,
    headerVersion: HEADER_VERSION,
    maxTableEntries,
    blockSize: BLOCK_SIZE,
    checksum: 0,
    parentUuid: Buffer.alloc(16),
    parentTimestamp: 0,
    parentUnicodeName: '',
    locators: Array.from({ length: LOCATOR_COUNT }, emptyLocator),
  };
}

function utf16be(s: string): Buffer {
  const le = Buffer.from(s, 'utf16le');
  return le.swap16();
}

export function encodeHeader(h: DynamicHeader): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.write(HEADER_COOKIE, O.cookie, 'latin1');
  b.writeBigUInt64BE(h.dataOffset, O.dataOffset);
  b.writeBigUInt64BE(BigInt(h.tableOffset), O.tableOffset);
  b.writeUInt32BE(h.headerVersion, O.headerVersion);
  b.writeUInt32BE(h.maxTableEntries, O.maxTableEntries);
  b.writeUInt32BE(h.blockSize, O.blockSize);
  h.parentUuid.copy(b, O.parentUuid, 0, 16);
  b.writeUInt32BE(h.parentTimestamp >>> 0, O.parentTimestamp);
  const name = utf16be(h.parentUnicodeName);
  if (name.length > NAME_BYTES) throw new RangeError('parent name longer than 256 UTF-16 units');
  name.copy(b, O.parentUnicodeName);
  h.locators.forEach((l, i) => {
    const at = O.locators + i * LOCATOR_ENTRY_SIZE;
    b.writeUInt32BE(l.code, at);
    b.writeUInt32BE(l.dataSpace, at + 4);
    b.writeUInt32BE(l.dataLength, at + 8);
    b.writeUInt32BE(0, at + 12);
    b.writeBigUInt64BE(BigInt(l.dataOffset), at + 16);
  });
  h.checksum = vhdChecksum(b, O.checksum);
  b.writeUInt32BE(h.checksum, O.checksum);
  return b;
}

/** Decodes a dynamic header, or returns the reason it is not a valid one. */
export function decodeHeader(b: Buffer): DynamicHeader | string {
  if (b.length < HEADER_SIZE) return 'header truncated';
  if (b.toString('latin1', O.cookie, O.cookie + 8) !== HEADER_COOKIE) return 'bad header cookie';
  const checksum = b.readUInt32BE(O.checksum);
  const expected = vhdChecksum(b.subarray(0, HEADER_SIZE), O.checksum);
  if (checksum !== expected) {
    return `header checksum 0x${checksum.toString(16)} != computed 0x${expected.toString(16)}`;
  }
  const tableOffset = b.readBigUInt64BE(O.tableOffset);
  if (tableOffset > BigInt(Number.MAX_SAFE_INTEGER)) return 'header table offset out of range';
  const nameRaw = Buffer.from(b.subarray(O.parentUnicodeName, O.parentUnicodeName + NAME_BYTES)).swap16();
  let name = nameRaw.toString('utf16le');
  const nul = name.indexOf('\0');
  if (nul >= 0) name = name.slice(0, nul);
  const locators: LocatorEntry[] = [];
  for (let i = 0; i < LOCATOR_COUNT; i++) {
    const at = O.locators + i * LOCATOR_ENTRY_SIZE;
    const off = b.readBigUInt64BE(at + 16);
    if (off > BigInt(Number.MAX_SAFE_INTEGER)) return `locator ${i} offset out of range`;
    locators.push({
      code: b.readUInt32BE(at),
      dataSpace: b.readUInt32BE(at + 4),
      dataLength: b.readUInt32BE(at + 8),
      dataOffset: Number(off),
    });
  }
  return {
    dataOffset: b.readBigUInt64BE(O.dataOffset),
    tableOffset: Number(tableOffset),
    headerVersion: b.readUInt32BE(O.headerVersion),
    maxTableEntries: b.readUInt32BE(O.maxTableEntries),
    blockSize: b.readUInt32BE(O.blockSize),
    checksum,
    parentUuid: Buffer.from(b.subarray(O.parentUuid, O.parentUuid + 16)),
    parentTimestamp: b.readUInt32BE(O.parentTimestamp),
    parentUnicodeName: name,
    locators,
  };
}

/** Bytes reserved for a locator's data: blktap stores bytes, older writers sectors. */
export function locatorSpaceBytes(l: LocatorEntry): number {
  return l.dataSpace < 512 ? l.dataSpace * 512 : l.dataSpace;
}
