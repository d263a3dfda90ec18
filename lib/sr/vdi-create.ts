/** vdi_create and vdi_introduce: a new empty image plus its metadata record. */
import { randomUUID } from 'node:crypto';
import { createDynamic } from '../vhd/index.js';
import { getLog } from '../log/index.js';
import { SMError } from '../errors/sm-error.js';
import { faultPoint } from './fault.js';
import { beginJournal, endJournal, type Journal } from './journal.js';
import { newVdiRecord, type VdiRecord } from './metadata.js';
import type { Repository } from './repository.js';
import { requireRoomFor } from './room.js';
import { batRoomFor } from './sizes.js';

/** `uuid`: the one the toolstack chose (vdi_create's `vdi_uuid`, for backup VDIs); a new one otherwise. */
export async function createVdi(repo: Repository, size: number, fields: Partial<VdiRecord>, uuid: string = randomUUID()): Promise<string> {
  // The new image is written while this hold lasts, then released (LVM: deactivated) until the VDI is activated.
  return repo.backend.withImagesActive([], () => createImage(repo, size, fields, uuid));
}

async function createImage(repo: Repository, size: number, fields: Partial<VdiRecord>, uuid: string): Promise<string> {
  if ((await repo.backend.hasImage(uuid)) || (await repo.records.hasVdi(uuid))) throw new SMError('VDIExists', uuid);
  await requireRoomFor(repo.backend, [size], `a ${size}-byte VDI`);
  const journal: Journal = { kind: 'create', vdi: uuid };
  await beginJournal(repo.backend, journal);
  const path = await repo.backend.prepareImage(uuid, size);
  await createDynamic(path, size, { maxSize: batRoomFor(size), durable: true });
  faultPoint('create-image-written');
  await repo.records.putVdis([newVdiRecord(uuid, fields)]);
  faultPoint('create-metadata-written');
  await endJournal(repo.backend, journal);
  // The reply is not logged: without this line `sm log --vdi` could not show where a VDI came from.
  getLog().info(`VDI ${uuid} created: ${size} bytes`);
  return uuid;
}

/** Interrupted create: committed once the record exists; otherwise the image goes. */
export async function recoverCreate(repo: Repository, j: Extract<Journal, { kind: 'create' }>): Promise<string> {
  if (await repo.records.hasVdi(j.vdi)) {
    await endJournal(repo.backend, j);
    return `create of ${j.vdi} was complete`;
  }
  await repo.backend.removeImage(j.vdi);
  await endJournal(repo.backend, j);
  return `create of ${j.vdi} rolled back`;
}
