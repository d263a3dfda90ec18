/**
 * vdi_delete: a leaf image is removed; an image other images still depend on is
 * hidden instead and left to the GC. Either way the VDI's record goes. What to
 * do is decided before the journal.
 *
 * Whether an image has children is written in the children's headers, not in
 * the image, so in general only the whole tree answers it. This SR never gives
 * a visible, writable, managed VDI's image a child, though: a snapshot or a
 * clone first turns that image into a hidden base copy under a new uuid, a
 * `single` snapshot records the image it keeps as read-only, and sr_scan,
 * vdi_introduce and vdi_update record a visible image that has children as
 * read-only. So such a VDI is a leaf on its own word (its record and its
 * footer, read alone), whatever the size of the SR and whatever else cannot
 * be read now.
 *
 * Anything else (read-only, unmanaged, hidden, no usable record, its own image
 * unreadable) is decided from the whole tree: while an image is unreadable and
 * nothing says whose child it is, any such image may have a child nobody can
 * see, so it is hidden, never removed; an unreadable image that has (or may
 * have) children cannot be hidden, so its delete is refused before anything
 * changes. An unreadable leaf is removed: nothing reads through it.
 */
import { readImageSummary, setImageHidden } from '../vhd/index.js';
import { getLog } from '../log/index.js';
import { SMError } from '../errors/sm-error.js';
import { mergeOutLog, refuseMergeIntoRemote } from './cbt-logs.js';
import { faultPoint } from './fault.js';
import { beginJournal, endJournal, type Journal } from './journal.js';
import type { Repository } from './repository.js';
import { leftAloneFor } from './unreadable.js';

type Outcome = 'removed' | 'hidden' | 'absent';

/**
 * `dataOnly` (vdi_data_destroy): only the data goes; the record stays, as a
 * `cbt_metadata` VDI, and so does the changed-block log, which still answers
 * vdi_list_changed_blocks. Otherwise the log is merged into its neighbour's.
 * `mergeChecked`: the caller, under the same SR lock, found where that log
 * merges (remoteMergeTarget): no other host holds it, or the caller holds
 * that host's datapath paused (its log settled on disk, read again when it
 * unpauses); so it is neither looked up again nor refused.
 */
export async function deleteVdi(repo: Repository, uuid: string, opts: { dataOnly?: boolean; mergeChecked?: boolean } = {}): Promise<Outcome> {
  // One hold for the whole delete (LVM): what the plan activates stays active until the image is hidden or removed.
  return repo.backend.withImagesActive([], async () => {
    const plan = await planDelete(repo, uuid);
    if (typeof plan !== 'string') throw plan;
    if (!opts.dataOnly && !opts.mergeChecked) await refuseMergeIntoRemote(repo, uuid);
    const journal: Journal = { kind: 'delete', vdi: uuid, ...(opts.dataOnly ? { dataOnly: true } : {}) };
    await beginJournal(repo.backend, journal);
    const outcome = await carryOut(repo, uuid, plan);
    faultPoint('delete-image-gone');
    await finishRecord(repo, journal);
    await endJournal(repo.backend, journal);
    getLog().info(`VDI ${uuid} ${opts.dataOnly ? 'data destroyed' : 'deleted'} (image ${outcome})`);
    return outcome;
  });
}

/** The record and changed-block log after the image went: dropped and merged, or (data only) kept as cbt_metadata. */
async function finishRecord(repo: Repository, j: Extract<Journal, { kind: 'delete' }>): Promise<void> {
  if (!j.dataOnly) {
    await mergeOutLog(repo, j.vdi);
    await repo.records.dropVdis([j.vdi]);
    return;
  }
  const record = await repo.vdiRecord(j.vdi);
  if (record && record.type !== 'cbt_metadata') await repo.records.putVdis([{ ...record, type: 'cbt_metadata', cbt_enabled: true }]);
}

/** What deleting `uuid` does to its image now, or why it cannot be done (an error, not thrown). */
async function planDelete(repo: Repository, uuid: string): Promise<Outcome | SMError> {
  if (!(await repo.backend.hasImage(uuid))) return 'absent';
  if (await isWritableLeaf(repo, uuid)) return 'removed';
  // The tree activates every image, this one included, in one command (LVM).
  const { nodes } = await repo.tree();
  const node = nodes.get(uuid);
  if (!node) return 'absent';
  const alone = leftAloneFor(nodes);
  const mayHaveChildren = node.children.length > 0 || alone.hiddenChildrenPossible;
  if (node.unreadable !== undefined) {
    if (!mayHaveChildren) return 'removed';
    return new SMError('VDIUnavailable', `${uuid} is unreadable (${node.unreadable}) and may have children: it cannot be hidden until it reads again`);
  }
  if (node.children.length === 0 && mayHaveChildren) getLog().warn(`VDI ${uuid} hidden, not removed: ${alone.reasons.join('; ')}`);
  return mayHaveChildren ? 'hidden' : 'removed';
}

/** A visible, writable, managed VDI: never a parent in this SR (see the top of this file). */
async function isWritableLeaf(repo: Repository, uuid: string): Promise<boolean> {
  const record = await repo.vdiRecord(uuid).catch(() => undefined); // damaged: the tree decides
  if (!record || record.read_only || !record.managed) return false;
  const image = await repo.backend.withImagesActive([uuid], () => readImageSummary(repo.imagePath(uuid))).catch(() => undefined);
  return image !== undefined && !image.hidden;
}

async function carryOut(repo: Repository, uuid: string, outcome: Outcome): Promise<Outcome> {
  if (outcome === 'hidden') await setImageHidden(repo.imagePath(uuid), true);
  if (outcome === 'removed') await repo.backend.removeImage(uuid);
  return outcome;
}

/**
 * Interrupted delete: the toolstack asked for it, so it is completed, with the
 * same care as at first. If that is not possible now (an image turned
 * unreadable meanwhile, or the log's child became active on another host, whose
 * datapath would write its log back over the merge), the journal waits for a
 * later recovery; nothing else is blocked.
 */
export async function recoverDelete(repo: Repository, j: Extract<Journal, { kind: 'delete' }>): Promise<string | undefined> {
  // The log's merge, checked first as the delete did: the child may have been activated on another host since.
  const merge = j.dataOnly ? undefined : await refuseMergeIntoRemote(repo, j.vdi).catch((err: unknown) => (err instanceof SMError && err.name === 'VDIInUse' ? err : Promise.reject(err)));
  const plan = merge ?? (await repo.backend.withImagesActive([], () => planDelete(repo, j.vdi)));
  if (typeof plan !== 'string') {
    getLog().warn(`recovery: delete of ${j.vdi} waits: ${plan.opterr}`);
    return undefined;
  }
  const outcome = await carryOut(repo, j.vdi, plan);
  await finishRecord(repo, j);
  await endJournal(repo.backend, j);
  return `${j.dataOnly ? 'data destroy' : 'delete'} of ${j.vdi} completed (${outcome})`;
}
