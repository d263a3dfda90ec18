/**
 * vdi_resize / vdi_resize_online: grow only. The backend makes room first (LVM:
 * grow the LV, footer to its new end), then the VHD's size changes. Journaled;
 * see recoverResize for what a crash leaves.
 */
import { rm } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';
import { resizeImage } from '../vhd/index.js';
import { getLog } from '../log/index.js';
import { SMError } from '../errors/sm-error.js';
import { faultPoint } from './fault.js';
import { beginJournal, endJournal, type Journal } from './journal.js';
import type { Repository } from './repository.js';
import { requireRoomToGrow } from './room.js';
import { refuseDependedOn } from './snapshot.js';

/** `size`: the new size rounded up to whole blocks; `requested`: the bytes asked for. */
export async function resizeVdi(repo: Repository, uuid: string, size: number, requested = size): Promise<void> {
  await repo.backend.withImagesActive([uuid], () => resizeActive(repo, uuid, size, requested));
}

async function resizeActive(repo: Repository, uuid: string, size: number, requested: number): Promise<void> {
  const { virtualSize: current, maxVirtualSize, hidden } = await repo.info(uuid);
  const record = await repo.vdiRecord(uuid);
  await refuseDependedOn(repo, uuid, hidden, !record || record.read_only || !record.managed, 'VDIUnavailable');
  // Asked for less than it has (even if rounding up would land on the same size): that is a shrink.
  if (requested < current) throw new SMError('VDISize', `shrinking is not supported (${current} -> ${requested})`);
  if (size === current) return;
  if (size > maxVirtualSize && !repo.backend.canRewriteImages) {
    throw new SMError('VDISize', `${size} bytes is past the ${maxVirtualSize} bytes the image's BAT has room for, and this SR cannot rewrite an image`);
  }
  await requireRoomToGrow(repo.backend, current, size, `growing ${uuid} to ${size} bytes`);
  const journal: Journal = { kind: 'resize', vdi: uuid, size };
  await beginJournal(repo.backend, journal);
  await grow(repo, uuid, size).catch(async (err: unknown) => {
    // No room after all (LVM: the VDI's volume was deflated, so it grows by more): the refused lvresize changed nothing.
    if (err instanceof SMError && err.name === 'SRNoSpace') await endJournal(repo.backend, journal);
    throw err;
  });
  faultPoint('resize-image-done');
  await endJournal(repo.backend, journal);
  getLog().info(`VDI ${uuid} resized: ${current} -> ${size} bytes`);
}

async function grow(repo: Repository, uuid: string, size: number): Promise<void> {
  await repo.backend.prepareWrite(uuid, size);
  faultPoint('resize-room-made');
  await resizeImage(repo.imagePath(uuid), size);
}

/**
 * Interrupted resize. Within the BAT room the rest is cheap (make room, rewrite
 * the footer; both idempotent): rolled forward. A rewrite beside the image
 * replaced it atomically or not at all: its scratch copy is dropped and the
 * resize abandoned. If rolling forward fails, the image is left whole at its
 * old size (LVM: the footer put at the end of an LV grown before the crash).
 */
export async function recoverResize(repo: Repository, j: Extract<Journal, { kind: 'resize' }>): Promise<string> {
  const path = repo.imagePath(j.vdi);
  await rm(join(dirname(path), `.${basename(path)}.resize`), { force: true });
  let outcome = `resize of ${j.vdi} finished or abandoned cleanly`;
  if (await repo.backend.hasImage(j.vdi)) {
    try {
      // An interrupted inflate first (LVM: LV grown, footer not yet at its end): until then the image cannot be opened.
      await repo.backend.prepareWrite(j.vdi);
      const { virtualSize, maxVirtualSize } = await repo.info(j.vdi);
      if (virtualSize < j.size && j.size <= maxVirtualSize) {
        await grow(repo, j.vdi, j.size);
        outcome = `resize of ${j.vdi} to ${j.size} bytes completed`;
      }
    } catch (e) {
      await repo.backend.prepareWrite(j.vdi);
      outcome = `resize of ${j.vdi} abandoned (${e instanceof Error ? e.message : String(e)})`;
    }
  }
  await endJournal(repo.backend, j);
  return outcome;
}
