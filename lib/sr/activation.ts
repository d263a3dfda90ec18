/**
 * Which VDIs are active on any host of the pool. The host-local attach state
 * (attach-record.ts) says what this host did; the backend's activation records
 * say it to every host, so the master's GC leaves another host's VDIs alone.
 */
import { getLog } from '../log/index.js';
import { SMError } from '../errors/sm-error.js';
import { readVdiState } from './attach-record.js';
import type { Activation, StorageBackend } from './backend.js';
import { hostId } from './host-id.js';
import { activationsInToolstack } from './xapi-pause.js';
import type { ToolstackDb } from './xapi-sync.js';

/**
 * Every active VDI of the SR and the host that holds it. Where the backend's
 * records are host-local (LVM), other hosts' activations are the ones the
 * toolstack `db` records; without one, this host sees only its own.
 */
export async function poolActivations(backend: StorageBackend, db?: ToolstackDb): Promise<Map<string, Activation>> {
  const records = await backend.listActivations();
  if (backend.activationsPoolWide || !db) return records;
  for (const [vdi, a] of await activationsInToolstack(db, hostId())) if (!records.has(vdi)) records.set(vdi, a);
  return records;
}

/** The active VDIs' uuids, for the plans and pictures that need only those. */
export async function activeVdiSet(backend: StorageBackend): Promise<Set<string>> {
  return new Set((await backend.listActivations()).keys());
}

/** The VDIs this host has active. */
export async function activeHere(backend: StorageBackend): Promise<string[]> {
  const me = hostId();
  return [...(await backend.listActivations())].filter(([, a]) => a.host === me).map(([vdi]) => vdi);
}

/** Removes the VDI's record if this host wrote it; another host's record is that host's to remove. */
export async function dropActivation(backend: StorageBackend, vdi: string): Promise<void> {
  const record = (await backend.listActivations()).get(vdi);
  if (record?.host === hostId()) await backend.removeActivation(vdi);
}

/** Writes this host's record of the VDI; VDIInUse (24) if another host has it active. */
export async function recordActivation(backend: StorageBackend, vdi: string, writable: boolean): Promise<void> {
  const holder = (await backend.listActivations()).get(vdi);
  if (holder && holder.host !== hostId()) throw new SMError('VDIInUse', `${vdi} is active on host ${holder.host}`);
  await backend.writeActivation(vdi, { host: hostId(), writable, since: new Date().toISOString() });
}

/**
 * Records this host left behind when it went down with VDIs active: its own
 * records that its runtime state (gone with the reboot) no longer backs.
 * Other hosts' records are theirs to clear.
 */
export async function clearStaleActivations(backend: StorageBackend): Promise<string[]> {
  const me = hostId();
  const cleared: string[] = [];
  for (const [vdi, a] of await backend.listActivations()) {
    if (a.host !== me || (await readVdiState(backend.srUuid, vdi))?.active) continue;
    await backend.removeActivation(vdi);
    getLog().info(`VDI ${vdi}: stale activation record of this host (${me}, since ${a.since}) cleared`);
    cleared.push(vdi);
  }
  return cleared;
}
