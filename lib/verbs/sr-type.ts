/**
 * What is special to one SR type (File, NFS, LVMoISCSI): its device_config, how
 * to reach and prepare its storage, and probe. Everything else is shared (sr-driver.ts).
 */
import type { DriverInfo, Request } from '../smapi/index.js';
import type { BackendSpec } from '../sr/attach-record.js';

export interface SrType {
  /** Whether its backend keeps CBT logs (StorageBackend.cbtLogs): the CBT verbs and VDI_CONFIG_CBT. */
  readonly changedBlockTracking?: boolean;
  /** Executable name, e.g. `FileSR`. */
  readonly driver: string;
  readonly info: DriverInfo;
  /**
   * Prepares new, empty storage for the SR (refusing storage that holds an SR:
   * SRExists) and runs `init` while it is reachable.
   */
  create(req: Request, srUuid: string, init: (spec: BackendSpec) => Promise<void>): Promise<void>;
  /** Runs `fn` with the storage of an existing SR reachable, attached or not. */
  withStorage<T>(req: Request, srUuid: string, fn: (spec: BackendSpec) => Promise<T>): Promise<T>;
  /** Makes the storage reachable at `$SM_ROOT/run/sr-mount/<sr>`. */
  attach(req: Request, srUuid: string): Promise<BackendSpec>;
  detach(req: Request, srUuid: string): Promise<void>;
  /** The `<SRlist>` document, or an SM error carrying discovery hints on stderr. */
  probe(req: Request): Promise<string>;
}
