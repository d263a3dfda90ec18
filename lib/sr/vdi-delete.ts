/**
 * vdi_delete: a leaf image is removed; an image other images still depend on is
 * hidden instead and left to the GC. Either way the VDI's record goes.
 */
import { setImageHidden } from '../vhd/index.js';
import { getLog } from '../log/index.js';
import { faultPoint } from './fault.js';
import { beginJournal, endJournal, type Journal } from './journal.js';
import type { Repository } from './repository.js';

export async function deleteVdi(repo: Repository, uuid: string): Promise<'removed' | 'hidden' | 'absent'> {
  const journal: Journal = { kind: 'delete', vdi: uuid };
  await beginJournal(repo.backend, journal);
  const outcome = await removeOrHide(repo, uuid);
  faultPoint('delete-image-gone');
  const meta = await repo.metadata();
  delete meta.vdis[uuid];
  await repo.saveMetadata(meta);
  await endJournal(repo.backend, journal);
  getLog().info(`VDI ${uuid} deleted (image ${outcome})`);
  return outcome;
}

async function removeOrHide(repo: Repository, uuid: string): Promise<'removed' | 'hidden' | 'absent'> {
  if (!(await repo.backend.hasImage(uuid))) return 'absent';
  // The tree below activates every image, this one included, in one command (LVM).
  return repo.backend.withImagesActive([], () => removeOrHideImage(repo, uuid));
}

async function removeOrHideImage(repo: Repository, uuid: string): Promise<'removed' | 'hidden'> {
  const { nodes } = await repo.tree();
  if ((nodes.get(uuid)?.children.length ?? 0) > 0) {
    await setImageHidden(repo.imagePath(uuid), true);
    return 'hidden';
  }
  await repo.backend.removeImage(uuid);
  return 'removed';
}

/** Interrupted delete: the toolstack asked for it, so it is completed. */
export async function recoverDelete(repo: Repository, j: Extract<Journal, { kind: 'delete' }>): Promise<string> {
  const outcome = await removeOrHide(repo, j.vdi);
  const meta = await repo.metadata();
  if (meta.vdis[j.vdi]) {
    delete meta.vdis[j.vdi];
    await repo.saveMetadata(meta);
  }
  await endJournal(repo.backend, j);
  return `delete of ${j.vdi} completed (${outcome})`;
}
