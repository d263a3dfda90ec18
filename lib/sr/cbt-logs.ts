/**
 * The SR's side of changed-block tracking: which VDIs have a CBT log, and how
 * the chain of logs follows the VDI's chain of snapshots (DESIGN item 10).
 * A VDI tracks changes exactly when its log exists; its record's
 * `cbt_enabled` mirrors that (sr_scan puts it right after a crash).
 *
 * The logs of one VDI's snapshots form a chain, oldest first: each log's
 * child is the next snapshot's log, the last one's child is the VDI's own
 * log. A snapshot moves the VDI's log to the snapshot and starts a new, empty
 * one for the VDI; deleting a snapshot merges its log into its child.
 */
import { getLog } from '../log/index.js';
import { SMError } from '../errors/sm-error.js';
import { changedBetween, growTo, mergeBitmap, newLog, NIL_UUID, readLog, settleInconsistent, type CbtLog } from '../cbt/index.js';
import { poolActivations } from './activation.js';
import type { CbtLogStore } from './backend.js';
import { withPausedServing } from './datapath.js';
import { faultPoint } from './fault.js';
import { hostId } from './host-id.js';
import type { Repository } from './repository.js';
import type { ToolstackDb } from './xapi-sync.js';

function requireStore(repo: Repository): CbtLogStore {
  const store = repo.backend.cbtLogs;
  if (store === undefined) throw new SMError('Unimplemented', `SR ${repo.uuid} does not track changed blocks`);
  return store;
}

export async function hasCbtLog(repo: Repository, uuid: string): Promise<boolean> {
  return (await repo.backend.cbtLogs?.has(uuid)) === true;
}

/** The path of the VDI's existing log (LVM: its LV active for the verb). */
export function cbtLogPath(repo: Repository, uuid: string): Promise<string> {
  return requireStore(repo).path(uuid);
}

/** The log the datapath marks for this VDI, when it tracks changes. */
export async function trackedLog(repo: Repository, uuid: string): Promise<string | undefined> {
  return (await hasCbtLog(repo, uuid)) ? cbtLogPath(repo, uuid) : undefined;
}

const readStored = async (repo: Repository, uuid: string): Promise<CbtLog> => readLog(await cbtLogPath(repo, uuid));
const writeStored = (repo: Repository, uuid: string, log: CbtLog): Promise<void> => requireStore(repo).write(uuid, log);

/** Reads, changes and writes back a log (the SR lock keeps other verbs out). */
async function updateStored(repo: Repository, uuid: string, change: (log: CbtLog) => void): Promise<CbtLog> {
  const log = await readStored(repo, uuid);
  change(log);
  await writeStored(repo, uuid, log);
  return log;
}

async function readVdiLog(repo: Repository, uuid: string): Promise<CbtLog> {
  if (!(await requireStore(repo).has(uuid))) throw new SMError('VDIUnavailable', `VDI ${uuid} has no changed-block log (CBT is not enabled on it)`);
  try {
    return await readStored(repo, uuid);
  } catch (err) {
    throw new SMError('VDIUnavailable', `changed-block log of VDI ${uuid} cannot be read: ${(err as Error).message}`);
  }
}

/** A new empty log for a disk of `size` bytes; an existing one is kept (enabling twice changes nothing). */
export async function startTracking(repo: Repository, uuid: string, size: number): Promise<boolean> {
  if (await requireStore(repo).has(uuid)) return false;
  await writeStored(repo, uuid, newLog(size));
  return true;
}

/** The VDI's log goes; its snapshots' logs stay (they still answer between themselves). */
export async function stopTracking(repo: Repository, uuid: string): Promise<boolean> {
  const store = requireStore(repo);
  const had = await store.has(uuid);
  await store.remove(uuid); // also what a killed enable left half made
  return had;
}

/** The links of the VDI's log before a snapshot rotates it: recorded in the snapshot's journal. */
export async function logLinksBeforeSnapshot(repo: Repository, vdi: string): Promise<{ parent: string; child: string } | undefined> {
  if (!(await hasCbtLog(repo, vdi))) return undefined;
  const log = await readVdiLog(repo, vdi);
  return { parent: log.parent, child: log.child };
}

/**
 * Snapshot `snap` of `vdi` (the datapath paused, its log closed): the VDI's
 * log becomes the snapshot's (its child: the VDI), the older snapshot's log
 * points to it, and the VDI starts an empty log whose parent is the snapshot.
 * Undone by rollBackRotation until the snapshot is committed.
 */
export async function rotateForSnapshot(repo: Repository, vdi: string, snap: string): Promise<void> {
  const log = await readVdiLog(repo, vdi);
  // Left open by a datapath that died: every block counts as changed in the snapshot's log.
  if (settleInconsistent(log)) getLog().warn(`VDI ${vdi}: its changed-block log was not closed cleanly; the snapshot ${snap} lists every block as changed`);
  await writeStored(repo, snap, { ...log, child: vdi });
  faultPoint('cbt-snapshot-log-written');
  if (log.parent !== NIL_UUID && (await hasCbtLog(repo, log.parent))) {
    await updateStored(repo, log.parent, (p) => (p.child = snap));
    faultPoint('cbt-parent-relinked');
  }
  await writeStored(repo, vdi, { parent: snap, child: log.child, consistent: true, size: log.size, bitmap: Buffer.alloc(log.bitmap.length) });
}

/** An uncommitted snapshot's rotation undone: the VDI's log as it was (its marks are the snapshot's log's). */
export async function rollBackRotation(repo: Repository, vdi: string, snap: string, links: { parent: string; child: string }): Promise<void> {
  // Not rotated yet: the VDI's log is untouched; what the snapshot's log left half made (LVM: its LV being written) goes.
  if (!(await hasCbtLog(repo, snap))) return requireStore(repo).remove(snap);
  const moved = await readStored(repo, snap);
  await writeStored(repo, vdi, { ...moved, parent: links.parent, child: links.child });
  if (links.parent !== NIL_UUID && (await hasCbtLog(repo, links.parent))) {
    await updateStored(repo, links.parent, (p) => {
      if (p.child === snap) p.child = vdi;
    });
  }
  await requireStore(repo).remove(snap);
}

/**
 * Deleting a VDI whose log sits in a chain: its marks are merged into its
 * child's log (child |= it), the neighbours are linked to each other, and the
 * log goes. Every step is idempotent: an interrupted delete runs it again.
 */
export async function mergeOutLog(repo: Repository, uuid: string): Promise<void> {
  if (!(await hasCbtLog(repo, uuid))) return;
  const log = await readStored(repo, uuid);
  const childHasLog = log.child !== NIL_UUID && (await hasCbtLog(repo, log.child));
  if (childHasLog) {
    // The child may be the VDI itself, served here: its datapath holds the log, so it is paused meanwhile.
    await withPausedServing(repo, repo.uuid, log.child, () =>
      updateStored(repo, log.child, (c) => {
        mergeBitmap(log, c);
        c.parent = log.parent;
      }),
    );
    faultPoint('cbt-log-merged');
  }
  if (log.parent !== NIL_UUID && (await hasCbtLog(repo, log.parent))) {
    await updateStored(repo, log.parent, (p) => (p.child = childHasLog ? log.child : NIL_UUID));
  }
  await requireStore(repo).remove(uuid);
  getLog().info(`VDI ${uuid}: changed-block log ${childHasLog ? `merged into ${log.child}'s` : 'removed'}`);
}

/**
 * The VDI whose log `uuid`'s log merges into when it is deleted, and the
 * other host whose datapath holds that log open (the child is active there,
 * as `db` records it on LVM: activation.ts); undefined when no such host holds it.
 */
export async function remoteMergeTarget(repo: Repository, uuid: string, db?: ToolstackDb): Promise<{ child: string; host: string } | undefined> {
  if (!(await hasCbtLog(repo, uuid))) return undefined;
  const { child } = await readStored(repo, uuid);
  if (child === NIL_UUID) return undefined;
  const holder = (await poolActivations(repo.backend, db)).get(child);
  return holder && holder.host !== hostId() ? { child, host: holder.host } : undefined;
}

/**
 * Before a delete: merging into a log that another host's datapath holds
 * open would be undone by its next close, so that is refused (VDIInUse)
 * while the child VDI is active there and not paused for it (the delete
 * verb pauses it through the toolstack when it can).
 */
export async function refuseMergeIntoRemote(repo: Repository, uuid: string): Promise<void> {
  const remote = await remoteMergeTarget(repo, uuid);
  if (remote) {
    throw new SMError('VDIInUse', `the changed-block log of ${uuid} merges into ${remote.child}'s, which is active on host ${remote.host}: delete it once ${remote.child} is inactive there or active here`);
  }
}

/** After a resize: the log covers the new size (new blocks unchanged so far). */
export async function growLog(repo: Repository, uuid: string, size: number): Promise<void> {
  if (!(await hasCbtLog(repo, uuid))) return;
  const log = await readStored(repo, uuid);
  if (log.size >= size) return;
  growTo(log, size);
  await writeStored(repo, uuid, log);
}

/** As growLog, to the image's virtual size now (after vdi_resize). */
export async function growLogToImage(repo: Repository, uuid: string): Promise<void> {
  if (await hasCbtLog(repo, uuid)) await growLog(repo, uuid, (await repo.info(uuid)).virtualSize);
}

/** The blocks changed from snapshot `from` to `to` (bitmap of 64 KiB blocks, LSB first). */
export async function changedBlocks(repo: Repository, from: string, to: string) {
  requireStore(repo);
  await readVdiLog(repo, from);
  await readVdiLog(repo, to);
  try {
    return await changedBetween((u) => readVdiLog(repo, u), from, to);
  } catch (err) {
    if (err instanceof SMError) throw err;
    throw new SMError('VDIUnavailable', `changed blocks from ${from} to ${to}: ${(err as Error).message}`);
  }
}
