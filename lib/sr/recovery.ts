/** Completes or rolls back every interrupted change found in the SR's journals. */
import { getLog } from '../log/index.js';
import { readJournals } from './journal.js';
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
      default:
        continue; // coalesce / relink / leaf: the GC's
    }
    getLog().info(`recovery: ${outcome}`);
    done.push(outcome);
  }
  return done;
}
