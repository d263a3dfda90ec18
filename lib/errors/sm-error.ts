// The SM error table and the one error type every layer throws. It lives
// outside lib/smapi so lib/sr and the GC need not import the protocol. The
// names and codes are the established protocol's (the toolstack maps some
// codes to its own errors: 38 not implemented, 39 SR_NOT_EMPTY, 24 VDI_IN_USE,
// 16 SR_DEVICE_IN_USE, 144 VDI_MISSING); the descriptions are ours.

export const SM_ERRORS = {
  SRInUse: { code: 16, description: 'The SR is still in use' },
  VDIInUse: { code: 24, description: 'The VDI is in use by another operation or VM' },
  LockErr: { code: 37, description: 'Could not take a lock needed for this operation' },
  Unimplemented: { code: 38, description: 'This operation is not implemented by this SR type' },
  SRNotEmpty: { code: 39, description: 'The SR still holds VDIs' },
  SRScan: { code: 40, description: 'Scanning the SR failed' },
  SRExists: { code: 42, description: 'An SR already exists at this location' },
  VDIExists: { code: 43, description: 'A VDI with this UUID already exists' },
  SRNoSpace: { code: 44, description: 'Not enough free space in the SR' },
  VDIUnavailable: { code: 46, description: 'The VDI cannot be used right now' },
  SRUnavailable: { code: 47, description: 'The SR cannot be reached right now' },
  SRUnknownType: { code: 48, description: 'The SR type is not known' },
  LVMCreate: { code: 50, description: 'Creating the logical volume failed' },
  LVMMaster: { code: 58, description: 'This operation must run on the pool master' },
  FileSRCreate: { code: 61, description: 'Creating the file-based SR failed' },
  VDILoad: { code: 65, description: 'Reading the VDI failed' },
  VDIType: { code: 66, description: 'The VDI has a type this SR does not handle' },
  ISCSILogin: { code: 68, description: 'Logging in to the iSCSI target failed' },
  NFSVersion: { code: 72, description: 'The NFS version requested is not supported' },
  NFSMount: { code: 73, description: 'Mounting the NFS export failed' },
  NFSUnMount: { code: 74, description: 'Unmounting the NFS export failed' },
  NFSAttached: { code: 75, description: 'The NFS SR is already attached' },
  VDICreate: { code: 78, description: 'Creating the VDI failed' },
  VDISize: { code: 79, description: 'The requested VDI size is not valid' },
  VDIDelete: { code: 80, description: 'Deleting the VDI failed' },
  VDIClone: { code: 81, description: 'Cloning the VDI failed' },
  VDISnapshot: { code: 82, description: 'Snapshotting the VDI failed' },
  NFSCreate: { code: 88, description: 'Creating the SR directory on the NFS export failed' },
  ConfigLocationMissing: { code: 94, description: "The device-config 'location' is required" },
  ConfigTargetMissing: { code: 95, description: "The device-config 'target' is required" },
  ConfigTargetIQNMissing: { code: 96, description: "The device-config 'targetIQN' is required" },
  ConfigServerPathMissing: { code: 101, description: "The device-config 'serverpath' is required" },
  ConfigServerMissing: { code: 102, description: "The device-config 'server' is required" },
  ConfigSCSIid: { code: 107, description: "The device-config 'SCSIid' is missing or does not match a LUN" },
  NFSTarget: { code: 108, description: 'The NFS server could not be reached' },
  SnapshotChainTooLong: { code: 109, description: 'The VDI chain is too long to take another snapshot' },
  VDIResize: { code: 110, description: 'Resizing the VDI failed' },
  ConfigParamsMissing: { code: 115, description: 'Required device-config parameters are missing' },
  BadRequest: { code: 143, description: 'The request is not a valid SM request' },
  VDIMissing: { code: 144, description: 'The VDI does not exist' },
  MetadataError: { code: 181, description: 'The SR metadata could not be read or written' },
  EIO: { code: 200, description: 'An I/O error occurred' },
  SMGeneral: { code: 202, description: 'The storage manager hit an error' },
  LeafGCSkip: { code: 204, description: 'Leaf coalesce was skipped' },
  GenericException: { code: 1200, description: 'An unexpected error occurred in the storage manager' },
} as const satisfies Record<string, { code: number; description: string }>;

export type SMErrorName = keyof typeof SM_ERRORS;

export function isSMErrorName(name: string): name is SMErrorName {
  return Object.prototype.hasOwnProperty.call(SM_ERRORS, name);
}

/** `description [opterr=detail]`, the faultString the toolstack shows users. */
export function faultStringOf(description: string, opterr?: string): string {
  return opterr ? `${description} [opterr=${opterr}]` : description;
}

export class SMError extends Error {
  override readonly name: SMErrorName;
  readonly code: number;
  readonly description: string;
  readonly opterr: string | undefined;

  constructor(name: SMErrorName, opterr?: string, options?: { cause?: unknown }) {
    const { code, description } = SM_ERRORS[name];
    super(faultStringOf(description, opterr), options);
    this.name = name;
    this.code = code;
    this.description = description;
    this.opterr = opterr;
  }

  get faultString(): string {
    return faultStringOf(this.description, this.opterr);
  }
}

/**
 * Any thrown value as an SMError: SMErrors pass through, anything else is an
 * unexpected failure (GenericException 1200) with its message as opterr, the
 * original kept as `cause` for the log.
 */
export function toSMError(err: unknown): SMError {
  if (err instanceof SMError) return err;
  const message = err instanceof Error ? err.message || err.name : String(err);
  return new SMError('GenericException', message, { cause: err });
}
