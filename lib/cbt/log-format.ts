/**
 * blktap's changed-block log (`<vdi>.cbtlog`), byte for byte as its `cbt-util`
 * reads it: a 48-byte header, then one bit per 64 KiB block of the disk.
 *
 *   @0  parent uuid (16 bytes, nil when none)
 *   @16 child uuid (16 bytes, nil when none)
 *   @32 consistent, int32 little-endian (1: closed cleanly)
 *   @36 padding (4 bytes)
 *   @40 size, u64 little-endian: the disk's virtual size in bytes
 *   @48 bitmap, ceil(ceil(size / 64 KiB) / 8) bytes; block i is bit (i & 7)
 *       of byte (i >> 3), least significant bit first.
 *
 * The log of a disk lists the blocks written since its parent log was
 * rotated off (a snapshot); parent and child links chain the logs of a VDI's
 * snapshots oldest to newest.
 */

export const CBT_BLOCK_SIZE = 64 * 1024;
export const CBT_HEADER_SIZE = 48;
export const NIL_UUID = '00000000-0000-0000-0000-000000000000';

export interface CbtLog {
  /** The log before this one in the chain (an older snapshot's), or NIL_UUID. */
  parent: string;
  /** The log after this one (a newer snapshot's, or the VDI's own), or NIL_UUID. */
  child: string;
  /** False while a writer has the log open: a crash then leaves it false. */
  consistent: boolean;
  /** Virtual size of the disk in bytes. */
  size: number;
  /** One bit per CBT_BLOCK_SIZE block, LSB first; exactly bitmapBytes(size) long. */
  bitmap: Buffer;
}

export class CbtLogError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CbtLogError';
  }
}

export const blockCount = (size: number): number => Math.ceil(size / CBT_BLOCK_SIZE);
export const bitmapBytes = (size: number): number => Math.ceil(blockCount(size) / 8);

export function newLog(size: number, links: { parent?: string; child?: string } = {}): CbtLog {
  return { parent: links.parent ?? NIL_UUID, child: links.child ?? NIL_UUID, consistent: true, size, bitmap: Buffer.alloc(bitmapBytes(size)) };
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function uuidToBytes(uuid: string, into: Buffer, at: number): void {
  if (!UUID.test(uuid)) throw new CbtLogError(`not a uuid: ${uuid}`);
  Buffer.from(uuid.replace(/-/g, ''), 'hex').copy(into, at);
}

function uuidFromBytes(buf: Buffer, at: number): string {
  const h = buf.toString('hex', at, at + 16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function encodeHeader(log: Omit<CbtLog, 'bitmap'>): Buffer {
  const h = Buffer.alloc(CBT_HEADER_SIZE);
  uuidToBytes(log.parent, h, 0);
  uuidToBytes(log.child, h, 16);
  h.writeInt32LE(log.consistent ? 1 : 0, 32);
  h.writeBigUInt64LE(BigInt(log.size), 40);
  return h;
}

export function encodeLog(log: CbtLog): Buffer {
  if (log.bitmap.length !== bitmapBytes(log.size)) throw new CbtLogError(`bitmap of ${log.bitmap.length} bytes for a size of ${log.size} (needs ${bitmapBytes(log.size)})`);
  return Buffer.concat([encodeHeader(log), log.bitmap]);
}

export function decodeLog(buf: Buffer, what = 'CBT log'): CbtLog {
  if (buf.length < CBT_HEADER_SIZE) throw new CbtLogError(`${what}: ${buf.length} bytes, shorter than its header`);
  const size = buf.readBigUInt64LE(40);
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new CbtLogError(`${what}: size ${size} out of range`);
  const consistent = buf.readInt32LE(32);
  if (consistent !== 0 && consistent !== 1) throw new CbtLogError(`${what}: consistency flag ${consistent} is neither 0 nor 1`);
  const bytes = bitmapBytes(Number(size));
  if (buf.length < CBT_HEADER_SIZE + bytes) throw new CbtLogError(`${what}: bitmap cut short (${buf.length - CBT_HEADER_SIZE} of ${bytes} bytes)`);
  return {
    parent: uuidFromBytes(buf, 0),
    child: uuidFromBytes(buf, 16),
    consistent: consistent === 1,
    size: Number(size),
    bitmap: Buffer.from(buf.subarray(CBT_HEADER_SIZE, CBT_HEADER_SIZE + bytes)),
  };
}
