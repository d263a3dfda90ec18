/**
 * Host-local runtime state: the record sr_attach leaves (read by the GC and the
 * operator CLI to open the SR without a driver) and each VDI's attach state.
 */
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { SMError } from '../errors/sm-error.js';
import { sweepAtomicTemps, writeFileAtomic } from './atomic-write.js';
import type { StorageBackend } from './backend.js';
import { FileBackend } from './file-backend.js';
import { hostId } from './host-id.js';
import { LvmBackend } from './lvm-backend.js';
import { resetLvHolds } from './lv-holds.js';
import type { PoolRole } from './pool-role.js';
import { attachRecordPath, runStateDir } from './paths.js';

/** An iSCSI session an SR's storage depends on. */
export interface IscsiTargetRef {
  iqn: string;
  address: string;
  port: number;
}

export type BackendSpec =
  | { kind: 'file'; dir: string }
  /** `targets`: the iSCSI sessions the devices come through (LVMoISCSI), so detach keeps those another SR still uses. */
  | { kind: 'lvm'; vg: string; devices: string[]; targets?: IscsiTargetRef[] };

export interface AttachRecord {
  sr_uuid: string;
  driver: string;
  backend: BackendSpec;
  host: string;
  /** This host's role for the SR when it was attached (absent in records of older versions: master). */
  role?: PoolRole;
  attached_at: string;
}

export async function writeAttachRecord(srUuid: string, driver: string, backend: BackendSpec, role: PoolRole): Promise<void> {
  const record: AttachRecord = { sr_uuid: srUuid, driver, backend, host: hostId(), role, attached_at: new Date().toISOString() };
  await writeFileAtomic(attachRecordPath(srUuid), JSON.stringify(record, null, 1) + '\n');
}

/** Removes the temp files of host-state writes a killed process left (see sweepAtomicTemps). */
export async function sweepHostTemps(srUuid: string): Promise<void> {
  await sweepAtomicTemps(dirname(attachRecordPath(srUuid)));
  await sweepAtomicTemps(runStateDir('vdi', srUuid));
}

export async function readAttachRecord(srUuid: string): Promise<AttachRecord | undefined> {
  try {
    return JSON.parse(await readFile(attachRecordPath(srUuid), 'utf8')) as AttachRecord;
  } catch {
    return undefined;
  }
}

/** Every SR attached on this host. */
export async function listAttachRecords(): Promise<AttachRecord[]> {
  const names = await readdir(runStateDir('sr')).catch(() => [] as string[]);
  const out: AttachRecord[] = [];
  for (const n of names.filter((x) => x.endsWith('.json')).sort()) {
    const r = await readAttachRecord(n.slice(0, -'.json'.length));
    if (r) out.push(r);
  }
  return out;
}

/** Forgets the SR's host state; the SR type has made its images unreachable (LVM: vgchange -an), so no LV hold is left either. */
export async function removeAttachRecord(srUuid: string): Promise<void> {
  await rm(attachRecordPath(srUuid), { force: true });
  await rm(runStateDir('vdi', srUuid), { recursive: true, force: true });
  await resetLvHolds(srUuid);
}

export function backendOf(record: AttachRecord): StorageBackend {
  switch (record.backend.kind) {
    case 'file':
      return new FileBackend(record.sr_uuid, record.backend.dir);
    case 'lvm':
      return new LvmBackend(record.sr_uuid, record.backend.vg, record.backend.devices);
  }
}

/** The backend of an SR attached on this host, or SRUnavailable (47). */
export async function attachedBackend(srUuid: string): Promise<StorageBackend> {
  const record = await readAttachRecord(srUuid);
  if (!record) throw new SMError('SRUnavailable', `SR ${srUuid} is not attached on this host`);
  return backendOf(record);
}

export interface VdiState {
  writable: boolean;
  active: boolean;
  since: string;
  /** The kernel NBD device the attach chose (where the nbd module is loaded); connected while active. */
  nbd_device?: string;
}

/** Whether this host has the VDI activated: what a VDI's hold on its images (LVM) rests on. */
export const vdiActiveHere = (sr: string) => async (vdi: string): Promise<boolean> => (await readVdiState(sr, vdi))?.active === true;

const vdiStatePath = (sr: string, vdi: string) => runStateDir('vdi', sr, `${vdi}.json`);

export async function readVdiState(sr: string, vdi: string): Promise<VdiState | undefined> {
  try {
    return JSON.parse(await readFile(vdiStatePath(sr, vdi), 'utf8')) as VdiState;
  } catch {
    return undefined;
  }
}

export async function writeVdiState(sr: string, vdi: string, state: VdiState | undefined): Promise<void> {
  if (!state) {
    await rm(vdiStatePath(sr, vdi), { force: true });
    return;
  }
  await mkdir(runStateDir('vdi', sr), { recursive: true });
  await writeFileAtomic(vdiStatePath(sr, vdi), JSON.stringify(state) + '\n');
}

/** The attach state of every VDI of every SR on this host (to keep /dev/nbdN choices apart). */
export async function listVdiStates(): Promise<VdiState[]> {
  const out: VdiState[] = [];
  for (const sr of await readdir(runStateDir('vdi')).catch(() => [] as string[])) {
    for (const n of await readdir(runStateDir('vdi', sr)).catch(() => [] as string[])) {
      if (!n.endsWith('.json')) continue;
      const state = await readVdiState(sr, n.slice(0, -'.json'.length));
      if (state) out.push(state);
    }
  }
  return out;
}
