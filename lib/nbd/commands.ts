/**
 * One transmission request: checked against what was negotiated before any
 * device call (nbdkit's validate_request), then run, giving the reply as one
 * buffer. Emulation of what a device lacks (FUA, WRITE_ZEROES) lives here.
 */
import type { BlockDevice, Extent } from './block-device.js';
import { allowedCommandFlags, MAX_PAYLOAD, type Capabilities } from './capabilities.js';
import { nbdErrnoOf } from './errors.js';
import { BASE_ALLOCATION_ID } from './handshake.js';
import {
  Chunk,
  CHUNK_FLAG_DONE,
  CHUNK_HEADER_SIZE,
  Cmd,
  CmdFlag,
  chunk,
  Errno,
  errorChunk,
  simpleReply,
  SIMPLE_REPLY_SIZE,
  STATE_HOLE,
  STATE_ZERO,
  type ErrnoName,
  type Request,
} from './protocol.js';

/** At most this many descriptors in one BLOCK_STATUS reply (the protocol's limit). */
export const MAX_EXTENT_DESCRIPTORS = 1 << 20;
/** Size of the zero buffer WRITE_ZEROES is emulated with, whatever the request length. */
export const ZERO_WRITE_CHUNK = 1024 * 1024;
const ZEROES = Buffer.alloc(ZERO_WRITE_CHUNK);

export interface Rejection {
  errno: ErrnoName;
  message: string;
}

export interface Session {
  device: BlockDevice;
  caps: Capabilities;
  baseAllocation: boolean;
}

const COMMAND_NAMES: Record<number, string> = {
  [Cmd.READ]: 'READ',
  [Cmd.WRITE]: 'WRITE',
  [Cmd.DISC]: 'DISC',
  [Cmd.FLUSH]: 'FLUSH',
  [Cmd.TRIM]: 'TRIM',
  [Cmd.CACHE]: 'CACHE',
  [Cmd.WRITE_ZEROES]: 'WRITE_ZEROES',
  [Cmd.BLOCK_STATUS]: 'BLOCK_STATUS',
};

export function commandName(type: number): string {
  return COMMAND_NAMES[type] ?? `command ${type}`;
}

/** Why `req` must be refused, or undefined if the device may be called. */
export function validateRequest(req: Request, session: Session): Rejection | undefined {
  const { caps } = session;
  const name = commandName(req.type);
  const reject = (errno: ErrnoName, why: string): Rejection => ({ errno, message: `${name}: ${why}` });
  if (!(req.type in COMMAND_NAMES) || req.type === Cmd.DISC) return reject('EINVAL', 'unknown command');
  const extra = req.flags & ~allowedCommandFlags(caps, req.type);
  if (extra !== 0) return reject('EINVAL', `flags 0x${extra.toString(16)} not allowed`);
  const writes = req.type === Cmd.WRITE || req.type === Cmd.TRIM || req.type === Cmd.WRITE_ZEROES;
  if (writes && !caps.writable) return reject('EPERM', 'export is read-only');
  switch (req.type) {
    case Cmd.FLUSH:
      if (!caps.flush) return reject('EINVAL', 'not negotiated');
      return undefined; // offset and length carry nothing
    case Cmd.TRIM:
      if (!caps.trim) return reject('EINVAL', 'not negotiated');
      break;
    case Cmd.CACHE:
      return reject('EINVAL', 'not supported');
    case Cmd.BLOCK_STATUS:
      if (!caps.structuredReplies || !session.baseAllocation) return reject('EINVAL', 'no meta context negotiated');
      break;
    case Cmd.READ:
    case Cmd.WRITE:
      if (req.length > MAX_PAYLOAD) return reject('EINVAL', `length ${req.length} over the ${MAX_PAYLOAD}-byte payload limit`);
      break;
  }
  if (req.length === 0) return reject('EINVAL', 'zero length');
  if (req.offset + BigInt(req.length) > BigInt(caps.size)) {
    const past = req.type === Cmd.WRITE || req.type === Cmd.WRITE_ZEROES ? 'ENOSPC' : 'EINVAL';
    return reject(past, `range ${req.offset}+${req.length} past the end (${caps.size})`);
  }
  return undefined;
}

/** The reply to a request refused before the device was called. */
export function rejectionReply(req: Request, session: Session, rejection: Rejection): Buffer {
  return errorReply(req, session, Errno[rejection.errno], rejection.message);
}

function errorReply(req: Request, session: Session, errno: number, message: string): Buffer {
  // READ and BLOCK_STATUS answers must be structured once negotiated; others may stay simple.
  const structured = session.caps.structuredReplies && (req.type === Cmd.READ || req.type === Cmd.BLOCK_STATUS);
  return structured ? errorChunk(req.cookie, errno, message) : simpleReply(req.cookie, errno);
}

/** Runs a validated request; device failures become error replies, never exceptions. */
export async function executeRequest(req: Request, session: Session, payload: Buffer | undefined): Promise<Buffer> {
  try {
    return await run(req, session, payload);
  } catch (err) {
    const errno = nbdErrnoOf(err);
    return errorReply(req, session, Errno[errno], `${commandName(req.type)}: ${(err as Error)?.message ?? String(err)}`);
  }
}

async function run(req: Request, session: Session, payload: Buffer | undefined): Promise<Buffer> {
  const { device, caps } = session;
  const offset = Number(req.offset); // validated: inside the device, so a safe integer
  const fua = (req.flags & CmdFlag.FUA) !== 0 && caps.fua;
  const nativeFua = fua && !caps.emulateFua;
  const ok = () => simpleReply(req.cookie, 0);
  const flushIfEmulated = async () => {
    if (fua && caps.emulateFua) await device.flush!();
  };
  switch (req.type) {
    case Cmd.READ: {
      if (caps.structuredReplies) {
        // One OFFSET_DATA chunk covers the whole range, so DF is always honoured.
        const reply = chunk(req.cookie, CHUNK_FLAG_DONE, Chunk.OFFSET_DATA, 8 + req.length);
        reply.writeBigUInt64BE(req.offset, CHUNK_HEADER_SIZE);
        await device.read(reply.subarray(CHUNK_HEADER_SIZE + 8), offset);
        return reply;
      }
      const reply = simpleReply(req.cookie, 0, req.length);
      await device.read(reply.subarray(SIMPLE_REPLY_SIZE), offset);
      return reply;
    }
    case Cmd.WRITE:
      await device.write!(payload!, offset, nativeFua ? { fua: true } : undefined);
      await flushIfEmulated();
      return ok();
    case Cmd.FLUSH:
      await device.flush!();
      return ok();
    case Cmd.TRIM:
      await device.trim!(offset, req.length, nativeFua ? { fua: true } : undefined);
      await flushIfEmulated();
      return ok();
    case Cmd.WRITE_ZEROES:
      await writeZeroes(device, offset, req.length, {
        mayTrim: (req.flags & CmdFlag.NO_HOLE) === 0,
        fast: (req.flags & CmdFlag.FAST_ZERO) !== 0,
        fua: nativeFua,
      });
      await flushIfEmulated();
      return ok();
    case Cmd.BLOCK_STATUS:
      return blockStatusReply(req, device, offset);
  }
  throw new Error(`unreachable: ${commandName(req.type)} passed validation`);
}

async function writeZeroes(device: BlockDevice, offset: number, length: number, opts: { mayTrim: boolean; fast: boolean; fua: boolean }): Promise<void> {
  if (device.zero) {
    await device.zero(offset, length, opts);
    return;
  }
  // FAST_ZERO is never advertised without device.zero, so validation refused it already.
  for (let done = 0; done < length; ) {
    const n = Math.min(ZERO_WRITE_CHUNK, length - done);
    const last = done + n === length;
    await device.write!(ZEROES.subarray(0, n), offset + done, opts.fua && last ? { fua: true } : undefined);
    done += n;
  }
}

async function blockStatusReply(req: Request, device: BlockDevice, offset: number): Promise<Buffer> {
  const extents: Extent[] = device.extents ? await device.extents(offset, req.length) : [];
  const limit = (req.flags & CmdFlag.REQ_ONE) !== 0 ? 1 : MAX_EXTENT_DESCRIPTORS;
  const lengths: number[] = [];
  const states: number[] = [];
  let covered = 0;
  for (const e of extents) {
    if (covered >= req.length) break;
    const len = Math.min(Math.floor(e.length), req.length - covered);
    if (!(len > 0)) break; // a malformed map: answer the prefix we trust
    const state = (e.hole ? STATE_HOLE : 0) | (e.zero ? STATE_ZERO : 0);
    const last = states.length - 1;
    if (last >= 0 && states[last] === state) lengths[last] += len;
    else if (states.length < limit) {
      lengths.push(len);
      states.push(state);
    } else break;
    covered += len;
  }
  if (lengths.length === 0) {
    // No map (or an empty one): "data" is always a safe answer.
    lengths.push(req.length);
    states.push(0);
  }
  const reply = chunk(req.cookie, CHUNK_FLAG_DONE, Chunk.BLOCK_STATUS, 4 + 8 * lengths.length);
  reply.writeUInt32BE(BASE_ALLOCATION_ID, CHUNK_HEADER_SIZE);
  for (let i = 0; i < lengths.length; i++) {
    reply.writeUInt32BE(lengths[i], CHUNK_HEADER_SIZE + 4 + 8 * i);
    reply.writeUInt32BE(states[i], CHUNK_HEADER_SIZE + 8 + 8 * i);
  }
  return reply;
}
