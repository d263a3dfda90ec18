/**
 * What is special to one SR type (File, NFS, LVMoISCSI): its device_config, how
 * to reach and prepare its storage, and probe. Everything else is shared (verbs.ts).
 */
import type { DriverInfo, Request } from '../smapi/index.js';
import type { BackendSpec } from './attach-record.js';

export interface SrType {
  /** Executable name, e.g. `FileSR`. */
  readonly driver: string;
  readonly info: DriverInfo;
  /** Prepares new, empty storage for the SR; refuses storage that holds an SR (SRExists). */
  create(req: Request, srUuid: string): Promise<BackendSpec>;
  /** The storage of an existing SR without attaching it (sr_delete of a detached SR). */
  locate(req: Request, srUuid: string): Promise<BackendSpec>;
  /** Makes the storage reachable at `$SM_ROOT/run/sr-mount/<sr>`. */
  attach(req: Request, srUuid: string): Promise<BackendSpec>;
  detach(req: Request, srUuid: string): Promise<void>;
  /** Removes the (empty) SR's storage. */
  destroy(req: Request, srUuid: string): Promise<void>;
  /** The `<SRlist>` document, or an SM error carrying discovery hints on stderr. */
  probe(req: Request): Promise<string>;
}
