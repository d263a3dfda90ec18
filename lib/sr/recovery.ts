/** Completes or rolls back every interrupted change found in the SR's journals. */
import { getLog } from '../log/index.js';
import { journalImages, readJournals, type Journal } from './journal.js';
import type { Repository } from './repository.js';
import { recoverSnapshot } from './snapshot.js';
import { recoverCreate } from './vdi-create.js';
import { recoverDelete } from './vdi-delete.js';
import { recoverResize } from './vdi-resize.js';

/** Journals the SR layer owns; the GC recovers its own (coalesce, relink, leaf). */
export async function recoverSrJournals(repo: Repository): Promise<string[]> {
  const done: string[] = [];
  for (const j of await readJournals(repo.backend)) {
    // The images the change touched are reachable while it is finished or undone (LVM: held active).
    const outcome = await repo.backend.withImagesActive(journalImages(j), () => recoverOne(repo, j));
    if (outcome === undefined) continue;
    getLog().info(`recovery: ${outcome}`);
    done.push(outcome);
  }
  return done;
}

async function recoverOne(repo: Repository, j: Journal): Promise<string | undefined> {
  switch (j.kind) {
    case 'create':
      return recoverCreate(repo, j);
    case 'delete':
      return recoverDelete(repo, j);
    case 'resize':
      return recoverResize(repo, j);
    case 'snapshot':
      return recoverSnapshot(repo, j);
    case 'coalesce':
    case 'leaf':
      await keepParentReadable(repo, j);
      return undefined; // otherwise the GC's
    default:
      return undefined; // relink: the GC's
  }
}

/**
 * The GC's journals are the GC's to finish, but a GC killed while inflating the
 * parent (LVM: LV grown, footer not yet at its end) leaves an image nobody can
 * open, so no verb could read that chain until the next GC run. Inflating is
 * idempotent and self-completing: finish it here; a no-op when the parent is
 * whole or already gone (the coalesce got past its copy).
 */
async function keepParentReadable(repo: Repository, j: Extract<Journal, { kind: 'coalesce' | 'leaf' }>): Promise<void> {
  const copying = j.kind === 'leaf' || (await repo.backend.hasImage(j.vdi));
  if (copying && (await repo.backend.hasImage(j.parent))) await repo.backend.prepareWrite(j.parent);
}
