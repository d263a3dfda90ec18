/** Completes or rolls back every interrupted change found in the SR's journals. */
import { getLog } from '../log/index.js';
import { readJournals, type Journal } from './journal.js';
import type { Repository } from './repository.js';
import { recoverSnapshot } from './snapshot.js';
import { recoverCreate } from './vdi-create.js';
import { recoverDelete } from './vdi-delete.js';
import { recoverResize } from './vdi-resize.js';

/** Journals the SR layer owns; the GC recovers its own (coalesce, relink, leaf). */
export async function recoverSrJournals(repo: Repository): Promise<string[]> {
  const done: string[] = [];
  for (const j of await readJournals(repo.backend)) {
    let outcome: string | undefined;
    switch (j.kind) {
      case 'create':
        outcome = await recoverCreate(repo, j);
        break;
      case 'delete':
        outcome = await recoverDelete(repo, j);
        break;
      case 'resize':
        outcome = await recoverResize(repo, j);
        break;
      case 'snapshot':
        outcome = await recoverSnapshot(repo, j);
        break;
      case 'coalesce':
      case 'leaf':
        await keepParentReadable(repo, j);
        continue; // otherwise the GC's
      default:
        continue; // relink: the GC's
    }
    getLog().info(`recovery: ${outcome}`);
    done.push(outcome);
  }
  return done;
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
