/**
 * vdi_snapshot and vdi_clone, written once for every backend. The VDI keeps its
 * uuid as the writable leaf: its image becomes a read-only base copy, and new
 * empty children of that base take the VDI's uuid and (for a double snapshot or
 * a clone) the new VDI's uuid. A `single` snapshot makes the base itself the
 * snapshot. Journaled: an interrupted one is rolled back unless its metadata
 * was committed (the snapshot's record, written after the base copy's); after the commit the read-only base is settled (LVM: deflated),
 * which recovery finishes when it was cut short.
 */
import { randomUUID } from 'node:crypto';
import { createDifferencing, readImageSummary, setImageHidden } from '../vhd/index.js';
import { getLog } from '../log/index.js';
import { SMError } from '../errors/sm-error.js';
import { logLinksBeforeSnapshot, rollBackRotation, rotateForSnapshot } from './cbt-logs.js';
import { faultPoint } from './fault.js';
import { beginJournal, endJournal, type Journal } from './journal.js';
import { newVdiRecord, type VdiRecord } from './metadata.js';
import type { Repository } from './repository.js';
import { requireRoomFor } from './room.js';

/** The established limit: a chain this deep takes no further snapshot. */
export const MAX_CHAIN_DEPTH = 30;

export type SnapshotMode = 'double' | 'single' | 'clone';

/** What a snapshot made: the new VDI, and the base copy its chain now reads through (the new VDI itself for `single`). */
export interface SnapshotMade {
  snap: string;
  base: string;
}

/**
 * `checked`: the record snapshotAllowed() returned, when the caller ran it
 * beforehand (before pausing the VDI's datapath: reading a long chain takes
 * a while, and nothing it reads changes under the SR lock the verb holds).
 */
export async function snapshotVdi(repo: Repository, uuid: string, mode: SnapshotMode, checked?: VdiRecord): Promise<SnapshotMade> {
  const record = checked ?? (await snapshotAllowed(repo, uuid, mode));
  // The images it makes are released with this hold unless the VDI's activation holds them.
  return repo.backend.withImagesActive([uuid], () => snapshotActive(repo, uuid, mode, record));
}

/**
 * The checks of a snapshot that read only what verbs change (the VDI's record,
 * its chain's depth, the SR's room for the new leaf and, but for `single`,
 * the snapshot's own image); its record.
 */
export async function snapshotAllowed(repo: Repository, uuid: string, mode: SnapshotMode): Promise<VdiRecord> {
  const record = await repo.vdiRecord(uuid);
  if (!record) throw new SMError('VDIMissing', `${uuid} has no metadata record`);
  const depth = await repo.chainDepthOf(uuid);
  if (depth >= MAX_CHAIN_DEPTH) {
    throw new SMError('SnapshotChainTooLong', `chain of ${uuid} is ${depth} deep (limit ${MAX_CHAIN_DEPTH})`);
  }
  const { virtualSize } = await repo.info(uuid);
  await requireRoomFor(repo.backend, mode === 'single' ? [virtualSize] : [virtualSize, virtualSize], `a snapshot of ${uuid}`);
  return record;
}

async function snapshotActive(repo: Repository, uuid: string, mode: SnapshotMode, record: VdiRecord): Promise<SnapshotMade> {
  const steps = stepTimer();

  // A damaged footer or header fails here, before anything is journaled (a failing
  // rollback would block every verb on the SR). The rest of the snapshot, and its
  // rollback, read and write only these two structures of the image.
  const parent = await readImageSummary(repo.imagePath(uuid));
  await refuseDependedOn(repo, uuid, parent.hidden, record.read_only || !record.managed, 'VDIClone');

  const base = randomUUID();
  const snap = mode === 'single' ? base : randomUUID();
  // A clone starts no history of its own: only snapshots carry the VDI's changed-block log on.
  const cbt = mode === 'clone' ? undefined : await logLinksBeforeSnapshot(repo, uuid);
  const journal: Journal = { kind: 'snapshot', vdi: uuid, base, snap, mode, ...(cbt ? { cbt } : {}) };
  steps.lap('checks');
  await beginJournal(repo.backend, journal);
  steps.lap('journal');

  // The steps below are made durable together by one barrier before the commit.
  await repo.backend.renameImage(uuid, base, false);
  faultPoint('snapshot-renamed');
  const basePath = repo.imagePath(base);
  const leafPath = await repo.backend.prepareImage(uuid, parent.virtualSize);
  const snapPath = snap === base ? undefined : await repo.backend.prepareImage(snap, parent.virtualSize);
  // Independent writes, issued together: the new leaf, the other child, the base's hidden flag.
  await Promise.all([
    createDifferencing(leafPath, basePath, { parent }).then(() => faultPoint('snapshot-leaf-created')),
    snapPath &&
      createDifferencing(snapPath, basePath, { parent }).then(() => faultPoint('snapshot-child-created')),
    snapPath && setImageHidden(basePath, true, { sync: false }).then(() => faultPoint('snapshot-base-hidden')),
  ]);
  if (cbt) await rotateForSnapshot(repo, uuid, snap);
  steps.lap('images');
  const barrier = repo.backend.flushImages(snap === base ? [uuid, base] : [uuid, snap, base]);

  const now = snapshotTime();
  const records: VdiRecord[] = [];
  if (snap !== base) {
    records.push(newVdiRecord(base, {
      name_label: 'base copy',
      name_description: `read-only base of ${uuid}`,
      read_only: true,
      managed: false,
      type: record.type,
    }));
  }
  records.push(newVdiRecord(snap, {
    name_label: record.name_label,
    name_description: record.name_description,
    type: record.type,
    is_a_snapshot: mode !== 'clone',
    snapshot_of: mode === 'clone' ? '' : uuid,
    snapshot_time: mode === 'clone' ? '' : now,
    read_only: mode === 'single' ? true : record.read_only,
    sm_config: { ...record.sm_config },
    ...(cbt ? { cbt_enabled: true } : {}),
  }));
  // Staged while the barrier runs and committed after it; the snapshot's own record last: it is the commit.
  await repo.records.putVdis(records, { after: barrier });
  faultPoint('snapshot-metadata-written');
  steps.lap('barrier and records');
  await settleBase(repo, base);
  await endJournal(repo.backend, journal);
  steps.lap('journal ended');
  // Names every image involved, so `sm log --vdi` finds the new VDI and its base copy.
  getLog().info(`VDI ${uuid}: ${mode} snapshot made ${snap}${snap === base ? ' (the old image itself)' : `, base copy ${base}`} (${steps.summary()})`);
  return { snap, base };
}

/**
 * Snapshot, clone and resize change an image in place (rename it, grow it), so
 * an image others read through is refused, as the established SM refuses a
 * hidden one: a hidden base copy, or a visible image with children (a `single`
 * snapshot). Only a read-only VDI can have children (a writable one never
 * becomes a parent, and scan introduces a visible parent read-only), so only
 * then is the whole tree read; then an unreadable image whose parent is
 * unknown counts as a possible child.
 */
export async function refuseDependedOn(
  repo: Repository,
  uuid: string,
  hidden: boolean,
  readOnly: boolean,
  code: 'VDIClone' | 'VDIUnavailable',
): Promise<void> {
  if (hidden) throw new SMError(code, 'hidden VDI');
  if (!readOnly) return;
  const { nodes } = await repo.tree();
  const children = nodes.get(uuid)?.children ?? [];
  if (children.length > 0) throw new SMError(code, `VDI has children (${children.join(', ')}): they read through it`);
  const unknown = [...nodes.values()].find((n) => n.parentUnknown);
  if (unknown) throw new SMError(code, `image ${unknown.uuid} is unreadable (${unknown.unreadable}) and may be a child of this VDI`);
}

/**
 * Committed: the base is read-only from now on and gives back what it does not
 * use (LVM: deflate). A failure only costs space (the image is valid at every
 * step), so it is logged, never turned into a failed snapshot.
 */
async function settleBase(repo: Repository, base: string): Promise<void> {
  try {
    await repo.backend.settleReadOnly(base);
  } catch (e) {
    getLog().warn(`base copy ${base} keeps its full size: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/** Milliseconds per step, for the SMlog line (a snapshot of an active VDI runs while its datapath is paused). */
function stepTimer() {
  let last = Date.now();
  const laps: string[] = [];
  return {
    lap(name: string) {
      const now = Date.now();
      laps.push(`${name} ${now - last} ms`);
      last = now;
    },
    summary: () => laps.join(', '),
  };
}

/** `20261122T01:37:00Z`, the toolstack's snapshot_time format. */
function snapshotTime(d = new Date()): string {
  return d.toISOString().replace(/-/g, '').replace(/\.\d+Z$/, 'Z');
}

/**
 * Interrupted snapshot: committed once the new record exists (only the journal
 * is left to drop); otherwise every step is undone, in reverse, idempotently.
 */
export async function recoverSnapshot(repo: Repository, j: Extract<Journal, { kind: 'snapshot' }>): Promise<string> {
  const has = (u: string) => repo.backend.hasImage(u);
  if (await repo.records.hasVdi(j.snap)) {
    if (await has(j.base)) await settleBase(repo, j.base); // idempotent: finishes a deflate cut short
    await endJournal(repo.backend, j);
    return `snapshot of ${j.vdi} was complete`;
  }
  if (j.cbt) await rollBackRotation(repo, j.vdi, j.snap, j.cbt);
  // The base copy's record is written just before the snapshot's: it may be there alone.
  if (j.snap !== j.base) await repo.records.dropVdis([j.base]);
  if (j.snap !== j.base && (await has(j.snap))) await repo.backend.removeImage(j.snap);
  if (await has(j.base)) {
    // The original image was renamed to the base: whatever holds the VDI's uuid now is the new empty leaf.
    if (await has(j.vdi)) await repo.backend.removeImage(j.vdi);
    await setImageHidden(repo.imagePath(j.base), false);
    await repo.backend.renameImage(j.base, j.vdi);
  }
  await endJournal(repo.backend, j);
  return `snapshot of ${j.vdi} rolled back`;
}
