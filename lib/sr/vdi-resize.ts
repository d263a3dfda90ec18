/** vdi_resize / vdi_resize_online: grow only. */
import { rm } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';
import { resizeImage } from '../vhd/index.js';
import { getLog } from '../log/index.js';
import { SMError } from '../smapi/errors.js';
import { faultPoint } from './fault.js';
import { beginJournal, endJournal, type Journal } from './journal.js';
import type { Repository } from './repository.js';

export async function resizeVdi(repo: Repository, uuid: string, size: number): Promise<void> {
  const current = (await repo.info(uuid)).virtualSize;
  if (size < current) throw new SMError('VDISize', `shrinking is not supported (${current} -> ${size})`);
  if (size === current) return;
  const { free } = await repo.backend.space();
  if (free < 1024 * 1024) throw new SMError('SRNoSpace', `${free} bytes free`);
  const journal: Journal = { kind: 'resize', vdi: uuid, size };
  await beginJournal(repo.backend, journal);
  await resizeImage(repo.imagePath(uuid), size);
  faultPoint('resize-image-done');
  await endJournal(repo.backend, journal);
  getLog().info(`VDI ${uuid} resized: ${current} -> ${size} bytes`);
}

/** Interrupted resize: the image was replaced atomically or not at all; drop the scratch copy. */
export async function recoverResize(repo: Repository, j: Extract<Journal, { kind: 'resize' }>): Promise<string> {
  const path = repo.imagePath(j.vdi);
  await rm(join(dirname(path), `.${basename(path)}.resize`), { force: true });
  await endJournal(repo.backend, j);
  return `resize of ${j.vdi} finished or abandoned cleanly`;
}
