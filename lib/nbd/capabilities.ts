/**
 * The one place a device's optional members become what the server promises a
 * client (nbdkit's protocol_common_open): asked once per connection, then the
 * connection checks requests against these answers, never the device again.
 */
import type { BlockDevice } from './block-device.js';
import { CmdFlag, Cmd, TFlag } from './protocol.js';

/** Largest READ or WRITE payload (INFO_BLOCK_SIZE maximum); TRIM, WRITE_ZEROES and BLOCK_STATUS may be longer. */
export const MAX_PAYLOAD = 32 * 1024 * 1024;
const DEFAULT_PREFERRED = 4096;

export interface Capabilities {
  size: number;
  writable: boolean;
  flush: boolean;
  /** FUA advertised: native, or emulated with a flush after the write. */
  fua: boolean;
  /** FUA must be emulated by the server (write/trim/zero, then flush). */
  emulateFua: boolean;
  trim: boolean;
  writeZeroes: boolean;
  /** The device zeroes itself; otherwise the server writes zero buffers. */
  nativeZero: boolean;
  fastZero: boolean;
  extents: boolean;
  multiConn: boolean;
  structuredReplies: boolean;
  blockSize: { minimum: number; preferred: number; maximum: number };
}

export function capabilitiesOf(device: BlockDevice, structuredReplies: boolean): Capabilities {
  const writable = typeof device.write === 'function';
  const flush = typeof device.flush === 'function';
  const nativeFua = writable && device.nativeFua === true;
  const nativeZero = writable && typeof device.zero === 'function';
  return {
    size: device.size,
    writable,
    flush,
    fua: writable && (nativeFua || flush),
    emulateFua: writable && !nativeFua && flush,
    trim: writable && typeof device.trim === 'function',
    writeZeroes: writable,
    nativeZero,
    // Only a device that zeroes itself can answer "fast or not at all".
    fastZero: nativeZero,
    extents: typeof device.extents === 'function',
    multiConn: device.multiConn === true,
    structuredReplies,
    blockSize: { minimum: 1, preferred: preferredBlockSize(device.preferredBlockSize), maximum: MAX_PAYLOAD },
  };
}

function preferredBlockSize(asked: number | undefined): number {
  if (asked === undefined) return DEFAULT_PREFERRED;
  const powerOfTwo = Number.isInteger(asked) && asked > 0 && (asked & (asked - 1)) === 0;
  return powerOfTwo && asked >= 512 && asked <= MAX_PAYLOAD ? asked : DEFAULT_PREFERRED;
}

/** The transmission flags (u16) sent in INFO_EXPORT or after EXPORT_NAME. */
export function transmissionFlags(caps: Capabilities): number {
  let flags = TFlag.HAS_FLAGS;
  if (!caps.writable) flags |= TFlag.READ_ONLY;
  if (caps.flush) flags |= TFlag.SEND_FLUSH;
  if (caps.fua) flags |= TFlag.SEND_FUA;
  if (caps.trim) flags |= TFlag.SEND_TRIM;
  if (caps.writeZeroes) flags |= TFlag.SEND_WRITE_ZEROES;
  if (caps.fastZero) flags |= TFlag.SEND_FAST_ZERO;
  if (caps.structuredReplies) flags |= TFlag.SEND_DF;
  if (caps.multiConn) flags |= TFlag.CAN_MULTI_CONN;
  return flags;
}

/** The command flags a client may set on `command` given what was negotiated. */
export function allowedCommandFlags(caps: Capabilities, command: number): number {
  // FUA is accepted on every command once advertised, as the spec requires.
  let allowed = caps.fua ? CmdFlag.FUA : 0;
  if (command === Cmd.READ && caps.structuredReplies) allowed |= CmdFlag.DF;
  if (command === Cmd.WRITE_ZEROES) {
    allowed |= CmdFlag.NO_HOLE;
    if (caps.fastZero) allowed |= CmdFlag.FAST_ZERO;
  }
  if (command === Cmd.BLOCK_STATUS) allowed |= CmdFlag.REQ_ONE;
  return allowed;
}
