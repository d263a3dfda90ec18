/**
 * The server's typed errors and the one table that turns any error a device
 * raises into an NBD errno.
 */
import { DeviceError } from './block-device.js';
import { Errno, type ErrnoName } from './protocol.js';

/** Use of a server (or connection) after close() or destroy(), as undici's ClientClosedError. */
export class NbdServerClosedError extends Error {
  constructor(message = 'the NBD server is closed') {
    super(message);
    this.name = 'NbdServerClosedError';
  }
}

/** The peer broke the protocol; the connection is dropped. */
export class NbdProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NbdProtocolError';
  }
}

/** Node's errno codes for failures a device may let through, and the NBD errno each means. */
const SYSTEM_ERRNO: Record<string, ErrnoName> = {
  EPERM: 'EPERM',
  EACCES: 'EPERM',
  EROFS: 'EPERM',
  EIO: 'EIO',
  ENOMEM: 'ENOMEM',
  EINVAL: 'EINVAL',
  ENOSPC: 'ENOSPC',
  EDQUOT: 'ENOSPC',
  EFBIG: 'ENOSPC',
  EOVERFLOW: 'EOVERFLOW',
  ENOTSUP: 'ENOTSUP',
  EOPNOTSUPP: 'ENOTSUP',
  ESHUTDOWN: 'ESHUTDOWN',
};

/** The NBD errno a failed device call is reported with: DeviceError's own, a known system code, else EIO. */
export function nbdErrnoOf(err: unknown): ErrnoName {
  if (err instanceof DeviceError) return err.errno in Errno ? err.errno : 'EIO';
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code === 'string' && code in SYSTEM_ERRNO) return SYSTEM_ERRNO[code];
  return 'EIO';
}
