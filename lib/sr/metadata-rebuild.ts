/**
 * The operator's way back from SR metadata that cannot be used (damaged, or
 * written by a newer version): the stored document is copied aside as it is,
 * then a new one is made from the images, as a scan introduces images it has
 * no record for (visible images as VDIs, hidden ones as base copies). Names,
 * descriptions and snapshot links are lost; the copy keeps them for reference.
 */
import { mkdir, open } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { getLog } from '../log/index.js';
import { newSrMetadata } from './metadata.js';
import { smRoot } from './paths.js';
import { recoverSrJournals } from './recovery.js';
import type { Repository } from './repository.js';
import { scanSr } from './scan.js';

export interface RebuildOutcome {
  /** Where the old document was copied, if there was one. */
  kept?: string;
  vdis: number;
}

/** Run under the SR lock. */
export async function rebuildMetadata(repo: Repository, driver: string): Promise<RebuildOutcome> {
  const old = await repo.backend.readMetadataText();
  let kept: string | undefined;
  if (old !== undefined) {
    kept = join(smRoot(), 'var', 'lib', 'sm', `metadata-${repo.uuid}-${new Date().toISOString().replace(/[:.]/g, '')}.json`);
    await mkdir(dirname(kept), { recursive: true });
    const fh = await open(kept, 'wx', 0o600);
    try {
      await fh.writeFile(old);
      await fh.sync();
    } finally {
      await fh.close();
    }
  }
  await repo.saveMetadata(newSrMetadata(repo.uuid, driver));
  getLog().warn(`SR ${repo.uuid}: metadata rebuilt from the images${kept ? `; the old document is kept in ${kept}` : ''}`);
  return repo.backend.withImagesActive([], async () => {
    await recoverSrJournals(repo);
    const vdis = await scanSr(repo);
    return { kept, vdis: vdis.length };
  });
}
