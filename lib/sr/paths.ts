/** Every host path derives from SM_ROOT (default `/`), so tests and hosts can coexist. */
import { join } from 'node:path';

export function smRoot(): string {
  return process.env.SM_ROOT || '/';
}

/** Where an attached SR is reachable: `$SM_ROOT/run/sr-mount/<sr>`. */
export function srMountPath(srUuid: string): string {
  return join(smRoot(), 'run', 'sr-mount', srUuid);
}

/** Runtime state of this host (attach records, VDI activation). */
export function runStateDir(...parts: string[]): string {
  return join(smRoot(), 'run', 'sm', ...parts);
}

/** The record sr_attach leaves for the GC and the operator CLI. */
export function attachRecordPath(srUuid: string): string {
  return runStateDir('sr', `${srUuid}.json`);
}

export function lockDir(srUuid: string): string {
  return join(smRoot(), 'var', 'lock', 'sm', srUuid);
}

/** The control socket of the SR's datapath process on this host (lib/datapath/sm-datapath.ts). */
export function datapathControlPath(srUuid: string): string {
  return runStateDir('datapath', `${srUuid}.sock`);
}

/**
 * Where an active VDI is served over NBD (DESIGN item 8): a link to the
 * datapath's socket, as the established SM links tapdisk's; no colon in it.
 */
export function nbdSocketPath(srUuid: string, vdiUuid: string): string {
  return join(smRoot(), 'run', 'blktap-control', 'nbd', srUuid, vdiUuid);
}

/** Where xapi listens on this host (XML-RPC over HTTP on a unix socket): `$SM_ROOT/var/lib/xcp/xapi`. */
export function xapiSocketPath(): string {
  return join(smRoot(), 'var', 'lib', 'xcp', 'xapi');
}
