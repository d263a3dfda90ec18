/**
 * Fixed-newstyle option haggling: from the greeting to the start of
 * transmission (or to a close). Every option's data is read in full before it
 * is answered, so an option we do not know never desynchronises the stream.
 */
import type { Duplex } from 'node:stream';
import type { BlockDevice } from './block-device.js';
import { capabilitiesOf, transmissionFlags, type Capabilities } from './capabilities.js';
import { NbdProtocolError } from './errors.js';
import {
  BASE_ALLOCATION,
  CLIENT_FLAG_NO_ZEROES,
  encodeOptionReply,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  Info,
  KNOWN_CLIENT_FLAGS,
  NBDMAGIC,
  Opt,
  OPTION_HEADER_SIZE,
  Rep,
} from './protocol.js';
import type { SocketReader } from './socket-reader.js';

/** More options than any real client sends (qemu and libnbd send under ten). */
export const MAX_OPTIONS = 128;
/** Largest option data read; a longer option drops the connection. */
export const MAX_OPTION_LENGTH = 64 * 1024;
/** The protocol's limit on export names and meta context query strings. */
export const MAX_NAME_LENGTH = 4096;
/** Meta context id of `base:allocation` after SET_META_CONTEXT. */
export const BASE_ALLOCATION_ID = 1;

/** A device opened for one connection; `release` gives it back (closes what a factory made). */
export interface OpenedExport {
  device: BlockDevice;
  release(): Promise<void>;
}

/** What the handshake needs from the server's export table. */
export interface ExportTable {
  list(): { name: string; description?: string }[];
  description(name: string): string | undefined;
  /** undefined: no such export. Throws if the export exists but cannot be opened. */
  open(name: string): Promise<OpenedExport | undefined>;
}

export interface Negotiated {
  exportName: string;
  opened: OpenedExport;
  caps: Capabilities;
  /** `base:allocation` was selected for this export: BLOCK_STATUS is allowed. */
  baseAllocation: boolean;
}

class OptionError extends Error {
  constructor(
    readonly reply: number,
    message: string,
  ) {
    super(message);
  }
}

export async function handshake(socket: Duplex, reader: SocketReader, exports: ExportTable): Promise<Negotiated | undefined> {
  const greeting = Buffer.alloc(18);
  greeting.writeBigUInt64BE(NBDMAGIC, 0);
  greeting.writeBigUInt64BE(IHAVEOPT, 8);
  greeting.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  socket.write(greeting);

  const clientFlags = (await reader.read(4)).readUInt32BE(0);
  if ((clientFlags & ~KNOWN_CLIENT_FLAGS) !== 0) throw new NbdProtocolError(`unknown client flags 0x${clientFlags.toString(16)}`);
  const noZeroes = (clientFlags & CLIENT_FLAG_NO_ZEROES) !== 0;

  let structured = false;
  let metaContext: { exportName: string; baseAllocation: boolean } | undefined;

  for (let count = 0; ; count++) {
    if (count >= MAX_OPTIONS) throw new NbdProtocolError(`more than ${MAX_OPTIONS} options`);
    const header = await reader.read(OPTION_HEADER_SIZE);
    if (header.readBigUInt64BE(0) !== IHAVEOPT) throw new NbdProtocolError('bad option magic');
    const option = header.readUInt32BE(8);
    const length = header.readUInt32BE(12);
    if (length > MAX_OPTION_LENGTH) throw new NbdProtocolError(`option ${option} carries ${length} bytes (limit ${MAX_OPTION_LENGTH})`);
    const data = await reader.read(length);
    const reply = (type: number, payload?: Buffer) => socket.write(encodeOptionReply(option, type, payload));

    if (option === Opt.EXPORT_NAME) {
      // No error reply exists for this option: an unusable name closes the connection.
      const name = data.toString('utf8');
      const opened = length <= MAX_NAME_LENGTH ? await exports.open(name) : undefined;
      if (!opened) throw new NbdProtocolError(`EXPORT_NAME: unknown export ${JSON.stringify(name.slice(0, 256))}`);
      const caps = capabilitiesOf(opened.device, structured);
      const tail = Buffer.alloc(noZeroes ? 10 : 134);
      tail.writeBigUInt64BE(BigInt(caps.size), 0);
      tail.writeUInt16BE(transmissionFlags(caps), 8);
      socket.write(tail);
      return { exportName: name, opened, caps, baseAllocation: metaContext?.exportName === name && metaContext.baseAllocation };
    }

    try {
      switch (option) {
        case Opt.ABORT:
          reply(Rep.ACK);
          return undefined;
        case Opt.LIST:
          if (length !== 0) throw new OptionError(Rep.ERR_INVALID, 'LIST takes no data');
          for (const { name, description } of exports.list()) {
            const nameBuf = Buffer.from(name, 'utf8');
            const payload = Buffer.alloc(4 + nameBuf.length);
            payload.writeUInt32BE(nameBuf.length, 0);
            nameBuf.copy(payload, 4);
            reply(Rep.SERVER, Buffer.concat([payload, Buffer.from(description ?? '', 'utf8')]));
          }
          reply(Rep.ACK);
          break;
        case Opt.STRUCTURED_REPLY:
          if (length !== 0) throw new OptionError(Rep.ERR_INVALID, 'STRUCTURED_REPLY takes no data');
          if (structured) throw new OptionError(Rep.ERR_INVALID, 'structured replies already negotiated');
          structured = true;
          reply(Rep.ACK);
          break;
        case Opt.INFO:
        case Opt.GO: {
          const { name, requests } = parseInfoRequest(data);
          const opened = await openOrFail(exports, name);
          const caps = capabilitiesOf(opened.device, structured);
          for (const info of infoReplies(name, exports.description(name), caps, requests)) reply(Rep.INFO, info);
          reply(Rep.ACK);
          if (option === Opt.INFO) {
            await opened.release();
            break;
          }
          return { exportName: name, opened, caps, baseAllocation: metaContext?.exportName === name && metaContext.baseAllocation };
        }
        case Opt.LIST_META_CONTEXT:
        case Opt.SET_META_CONTEXT: {
          const set = option === Opt.SET_META_CONTEXT;
          if (set && !structured) throw new OptionError(Rep.ERR_INVALID, 'SET_META_CONTEXT needs structured replies first');
          const { name, queries } = parseMetaContextRequest(data);
          if (!exports.list().some((e) => e.name === name)) throw new OptionError(Rep.ERR_UNKNOWN, `unknown export ${JSON.stringify(name)}`);
          const matches = set
            ? queries.includes(BASE_ALLOCATION)
            : queries.length === 0 || queries.some((q) => q === BASE_ALLOCATION || q === 'base:');
          if (matches) {
            const ctx = Buffer.from(BASE_ALLOCATION, 'utf8');
            const payload = Buffer.alloc(4 + ctx.length);
            payload.writeUInt32BE(set ? BASE_ALLOCATION_ID : 0, 0);
            ctx.copy(payload, 4);
            reply(Rep.META_CONTEXT, payload);
          }
          if (set) metaContext = { exportName: name, baseAllocation: matches };
          reply(Rep.ACK);
          break;
        }
        default:
          // STARTTLS, EXTENDED_HEADERS and anything newer or unknown.
          throw new OptionError(Rep.ERR_UNSUP, `option ${option} not supported`);
      }
    } catch (err) {
      if (!(err instanceof OptionError)) throw err;
      reply(err.reply, Buffer.from(err.message, 'utf8'));
    }
  }
}

async function openOrFail(exports: ExportTable, name: string): Promise<OpenedExport> {
  let opened: OpenedExport | undefined;
  try {
    opened = await exports.open(name);
  } catch (err) {
    throw new OptionError(Rep.ERR_UNKNOWN, `export ${JSON.stringify(name)} could not be opened: ${(err as Error).message}`);
  }
  if (!opened) throw new OptionError(Rep.ERR_UNKNOWN, `unknown export ${JSON.stringify(name)}`);
  return opened;
}

/** INFO/GO data: u32 name length @0, name @4, u16 count, count x u16 info types. */
function parseInfoRequest(data: Buffer): { name: string; requests: number[] } {
  const bad = () => new OptionError(Rep.ERR_INVALID, 'malformed INFO/GO request');
  if (data.length < 6) throw bad();
  const nameLength = data.readUInt32BE(0);
  if (nameLength > MAX_NAME_LENGTH) throw new OptionError(Rep.ERR_INVALID, 'export name too long');
  if (4 + nameLength + 2 > data.length) throw bad();
  const name = data.toString('utf8', 4, 4 + nameLength);
  const count = data.readUInt16BE(4 + nameLength);
  if (data.length !== 4 + nameLength + 2 + 2 * count) throw bad();
  const requests: number[] = [];
  for (let i = 0; i < count; i++) requests.push(data.readUInt16BE(4 + nameLength + 2 + 2 * i));
  return { name, requests };
}

/** Meta context data: u32 name length, name, u32 query count, then (u32 length, query) each. */
function parseMetaContextRequest(data: Buffer): { name: string; queries: string[] } {
  const bad = () => new OptionError(Rep.ERR_INVALID, 'malformed meta context request');
  if (data.length < 8) throw bad();
  const nameLength = data.readUInt32BE(0);
  if (nameLength > MAX_NAME_LENGTH || 4 + nameLength + 4 > data.length) throw bad();
  const name = data.toString('utf8', 4, 4 + nameLength);
  let at = 4 + nameLength;
  const count = data.readUInt32BE(at);
  at += 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (at + 4 > data.length) throw bad();
    const len = data.readUInt32BE(at);
    at += 4;
    if (len > MAX_NAME_LENGTH || at + len > data.length) throw bad();
    queries.push(data.toString('utf8', at, at + len));
    at += len;
  }
  if (at !== data.length) throw bad();
  return { name, queries };
}

/** INFO_EXPORT always, INFO_BLOCK_SIZE always (our limits bind only clients that asked, but cost others nothing), name and description when asked. */
function infoReplies(name: string, description: string | undefined, caps: Capabilities, requests: number[]): Buffer[] {
  const out: Buffer[] = [];
  const exportInfo = Buffer.alloc(12); // type u16 @0, size u64 @2, flags u16 @10
  exportInfo.writeUInt16BE(Info.EXPORT, 0);
  exportInfo.writeBigUInt64BE(BigInt(caps.size), 2);
  exportInfo.writeUInt16BE(transmissionFlags(caps), 10);
  out.push(exportInfo);
  if (requests.includes(Info.NAME)) out.push(typedString(Info.NAME, name));
  if (requests.includes(Info.DESCRIPTION) && description !== undefined) out.push(typedString(Info.DESCRIPTION, description));
  const blockSize = Buffer.alloc(14); // type u16 @0, minimum u32 @2, preferred u32 @6, maximum u32 @10
  blockSize.writeUInt16BE(Info.BLOCK_SIZE, 0);
  blockSize.writeUInt32BE(caps.blockSize.minimum, 2);
  blockSize.writeUInt32BE(caps.blockSize.preferred, 6);
  blockSize.writeUInt32BE(caps.blockSize.maximum, 10);
  out.push(blockSize);
  return out;
}

function typedString(type: number, text: string): Buffer {
  const body = Buffer.from(text, 'utf8');
  const buf = Buffer.alloc(2 + body.length);
  buf.writeUInt16BE(type, 0);
  body.copy(buf, 2);
  return buf;
}
