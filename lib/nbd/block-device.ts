/**
 * The block-device contract the NBD server serves (nbdkit's plugin contract, in
 * our terms). lib/nbd knows nothing of VHD or SRs: a VHD chain, a plain file or
 * an in-memory disk are all just BlockDevices. Optional members are
 * capabilities; the server asks once at handshake and turns the answers into
 * transmission flags (a missing `write` means read-only, a missing `zero` is
 * emulated with writes, a missing FUA with write + flush).
 */

/** One run of the device's allocation map, as NBD's `base:allocation` context reports it. */
export interface Extent {
  /** Bytes; consecutive extents cover the asked range from its start. */
  length: number;
  /** Nothing stored here: reads fall through to zeroes (NBD_STATE_HOLE). */
  hole: boolean;
  /** Reads return zeroes (NBD_STATE_ZERO). */
  zero: boolean;
}

export interface WriteOptions {
  /** Force unit access: durable before the promise resolves. */
  fua?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** The range may become a hole (NBD's NO_HOLE flag unset). */
  mayTrim?: boolean;
  /** Fail with ENOTSUP-coded DeviceError at once unless zeroing is cheaper than writing. */
  fast?: boolean;
}

/** Error a device raises with the NBD errno it maps to (EIO when absent). */
export class DeviceError extends Error {
  constructor(
    readonly errno: 'EPERM' | 'EIO' | 'ENOMEM' | 'EINVAL' | 'ENOSPC' | 'EOVERFLOW' | 'ENOTSUP' | 'ESHUTDOWN',
    message: string,
  ) {
    super(message);
    this.name = 'DeviceError';
  }
}

export interface BlockDevice {
  /** Virtual size in bytes; fixed while served. */
  readonly size: number;
  /** Preferred I/O size (power of two, >= 512); advertised in INFO_BLOCK_SIZE. */
  readonly preferredBlockSize?: number;
  /**
   * Whether a FLUSH on any connection covers writes acknowledged on every
   * connection (one shared state behind all of them): NBD's CAN_MULTI_CONN.
   */
  readonly multiConn?: boolean;
  /** Fills `buf` from byte `offset`; the server has checked the range. */
  read(buf: Buffer, offset: number): Promise<void>;
  /** Absent: the export is read-only. Many writes may be in flight at once. */
  write?(data: Buffer, offset: number, opts?: WriteOptions): Promise<void>;
  /** Whether `write` honours `fua` itself (otherwise the server flushes after it). */
  readonly nativeFua?: boolean;
  /** Every write acknowledged so far is durable when this resolves. */
  flush?(): Promise<void>;
  /** Advisory discard. */
  trim?(offset: number, length: number, opts?: WriteOptions): Promise<void>;
  /** Absent on a writable device: the server writes zero buffers itself. */
  zero?(offset: number, length: number, opts?: ZeroOptions): Promise<void>;
  /** The allocation map of [offset, offset+length); may answer a shorter prefix. Absent: all data. */
  extents?(offset: number, length: number): Promise<Extent[]>;
  /** Flushes and releases the device; no call follows. */
  close(): Promise<void>;
}
