/**
 * The operator's way back from SR metadata that cannot be used (an SR record
 * or single-layout document damaged, or written by a newer version; a damaged
 * VDI record): what cannot be used is copied aside as it is, then a new SR
 * record is made and the images without a usable record are recorded again,
 * as a scan introduces images it has no record for (visible images as VDIs,
 * hidden ones as base copies). The VDI records that still parse are kept with
 * their names; the others' names, descriptions and snapshot links are lost
 * (the copies keep them for reference).
 */
import { mkdir, open } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { getLog } from '../log/index.js';
import { newSrRecord } from './metadata.js';
import { smRoot } from './paths.js';
import { recoverSrJournals } from './recovery.js';
import type { Repository } from './repository.js';
import { scanSr } from './scan.js';

export interface RebuildOutcome {
  /** Where the old SR metadata was copied, if there was some. */
  kept?: string;
  vdis: number;
}

async function keep(name: string, text: string): Promise<string> {
  const path = join(smRoot(), 'var', 'lib', 'sm', name);
  await mkdir(dirname(path), { recursive: true });
  const fh = await open(path, 'wx', 0o600);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return path;
}

/** Run under the SR lock. */
export async function rebuildMetadata(repo: Repository, driver: string): Promise<RebuildOutcome> {
  const stamp = new Date().toISOString().replace(/[:.]/g, '');
  const old = await repo.records.rawText();
  const kept = old === undefined ? undefined : await keep(`metadata-${repo.uuid}-${stamp}.json`, old);
  await repo.records.writeSr(newSrRecord(repo.uuid, driver));
  await repo.backend.recordMedium.removeLegacy();
  // Damaged VDI records: copied aside, then dropped, so the scan below records their images again.
  const { damaged } = await repo.records.listVdis();
  for (const uuid of damaged.keys()) {
    const text = await repo.backend.recordMedium.readRecordText(uuid);
    if (text !== undefined) getLog().warn(`SR ${repo.uuid}: damaged record of VDI ${uuid} kept in ${await keep(`metadata-${repo.uuid}-${stamp}-vdi-${uuid}.json`, text)}`);
  }
  await repo.records.dropVdis([...damaged.keys()]);
  getLog().warn(`SR ${repo.uuid}: metadata rebuilt from the images${kept ? `; the old SR metadata is kept in ${kept}` : ''}`);
  return repo.backend.withImagesActive([], async () => {
    await recoverSrJournals(repo);
    const vdis = await scanSr(repo);
    return { kept, vdis: vdis.length };
  });
}
