/**
 * NBD wire constants and message encoders (NetworkBlockDevice/nbd `doc/proto.md`).
 * Framing only: no sockets, no devices. Every integer on the wire is big-endian.
 */

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server, u16). */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
/** Client flags (u32); any other bit makes the server drop the connection. */
export const CLIENT_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const CLIENT_FLAG_NO_ZEROES = 1 << 1;
export const KNOWN_CLIENT_FLAGS = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const REP_ERR = 0x80000000;
export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REP_ERR + 1,
  ERR_POLICY: REP_ERR + 2,
  ERR_INVALID: REP_ERR + 3,
  ERR_PLATFORM: REP_ERR + 4,
  ERR_TLS_REQD: REP_ERR + 5,
  ERR_UNKNOWN: REP_ERR + 6,
  ERR_SHUTDOWN: REP_ERR + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERR + 8,
  ERR_TOO_BIG: REP_ERR + 9,
} as const;

export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

/** Transmission flags (u16). */
export const TFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

/** Command flags (u16). */
export const CmdFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const;

export const Chunk = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;
export const CHUNK_FLAG_DONE = 1 << 0;

/** `base:allocation` descriptor flags. */
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;

export const BASE_ALLOCATION = 'base:allocation';

/** NBD errno values (the protocol's own numbering, equal to Linux's). */
export const Errno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type ErrnoName = keyof typeof Errno;

export const REQUEST_SIZE = 28; // magic u32 @0, flags u16 @4, type u16 @6, cookie u64 @8, offset u64 @16, length u32 @24
export const SIMPLE_REPLY_SIZE = 16; // magic u32 @0, error u32 @4, cookie u64 @8
export const CHUNK_HEADER_SIZE = 20; // magic u32 @0, flags u16 @4, type u16 @6, cookie u64 @8, length u32 @16
export const OPTION_HEADER_SIZE = 16; // IHAVEOPT u64 @0, option u32 @8, length u32 @12
export const OPTION_REPLY_HEADER_SIZE = 20; // magic u64 @0, option u32 @8, type u32 @12, length u32 @16

export interface Request {
  flags: number;
  type: number;
  /** Opaque; echoed back as read. */
  cookie: Buffer;
  /** As sent (u64); only turned into a number once checked against the size. */
  offset: bigint;
  length: number;
}

export function decodeRequest(buf: Buffer): Request | undefined {
  if (buf.readUInt32BE(0) !== REQUEST_MAGIC) return undefined;
  return {
    flags: buf.readUInt16BE(4),
    type: buf.readUInt16BE(6),
    cookie: Buffer.from(buf.subarray(8, 16)),
    offset: buf.readBigUInt64BE(16),
    length: buf.readUInt32BE(24),
  };
}

export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const buf = Buffer.alloc(OPTION_REPLY_HEADER_SIZE + data.length);
  buf.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(type >>> 0, 12);
  buf.writeUInt32BE(data.length, 16);
  data.copy(buf, OPTION_REPLY_HEADER_SIZE);
  return buf;
}

/**
 * A simple reply header in a buffer with `dataLength` bytes of room after it,
 * so a READ's data can be read straight into the reply (one buffer on the wire).
 */
export function simpleReply(cookie: Buffer, error: number, dataLength = 0): Buffer {
  const buf = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE + dataLength);
  buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  buf.writeUInt32BE(error, 4);
  cookie.copy(buf, 8);
  return buf;
}

/** A structured chunk header followed by `payloadLength` bytes of room. */
export function chunk(cookie: Buffer, flags: number, type: number, payloadLength: number): Buffer {
  const buf = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + payloadLength);
  buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  buf.writeUInt16BE(flags, 4);
  buf.writeUInt16BE(type, 6);
  cookie.copy(buf, 8);
  buf.writeUInt32BE(payloadLength, 16);
  return buf;
}

/** Largest message text in an error chunk; clients only log it. */
const MAX_ERROR_MESSAGE = 256;

export function errorChunk(cookie: Buffer, error: number, message: string): Buffer {
  const text = Buffer.from(message.slice(0, MAX_ERROR_MESSAGE), 'utf8');
  const buf = chunk(cookie, CHUNK_FLAG_DONE, Chunk.ERROR, 6 + text.length);
  buf.writeUInt32BE(error, CHUNK_HEADER_SIZE);
  buf.writeUInt16BE(text.length, CHUNK_HEADER_SIZE + 4);
  text.copy(buf, CHUNK_HEADER_SIZE + 6);
  return buf;
}
