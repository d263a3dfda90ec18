/** Why a VHD operation was refused; callers map the kind to an SM error code. */
export type VhdErrorKind =
  | 'corrupt' // on-disk structure is damaged
  | 'unsupported' // valid VHD, but a variant this library does not handle
  | 'invalid-argument' // the caller asked for something impossible (bad size, range)
  | 'not-found' // a file or a parent is missing
  | 'chain' // parent/child relationship is wrong (uuid mismatch, loop, too deep)
  | 'aborted'; // stopped on request; everything left consistent

export class VhdError extends Error {
  constructor(
    readonly kind: VhdErrorKind,
    message: string,
    readonly path?: string,
  ) {
    super(path ? `${path}: ${message}` : message);
    this.name = 'VhdError';
  }
}

export function corrupt(message: string, path?: string): VhdError {
  return new VhdError('corrupt', message, path);
}
