/**
 * vdi_introduce: an image already in the SR becomes a VDI. The toolstack names
 * the image (`vdi_location`) and the uuid the VDI gets (`new_uuid`). Here a
 * VDI's uuid is its image's name, so an image introduced under another uuid is
 * renamed first, which only a leaf can be (its children name it as parent).
 *
 * One change of the storage (the rename), then the record: a call cut short
 * between the two is finished by the same call again (the image is found
 * under its new name), or by the next scan, which records every image.
 */
import { getLog } from '../log/index.js';
import { SMError } from '../errors/sm-error.js';
import { poolActivations } from './activation.js';
import { faultPoint } from './fault.js';
import type { Repository } from './repository.js';
import { introducedRecord } from './introduced-record.js';

export async function introduceVdi(repo: Repository, image: string, uuid: string, type: string): Promise<string> {
  if (image !== uuid && (await repo.backend.hasImage(image))) await renameForIntroduce(repo, image, uuid);
  if (!(await repo.backend.hasImage(uuid))) throw new SMError('VDIMissing', `no image ${image} in SR ${repo.uuid}`);
  if (await repo.records.hasVdi(uuid)) {
    // Known already (the toolstack forgot it, e.g. vdi-forget): it learns it again as it is.
    getLog().info(`VDI ${uuid} introduced again; its record is kept`);
    return uuid;
  }
  const info = await repo.info(uuid);
  // Recorded as sr_scan records it: a writable VDI is never a parent (vdi-delete.ts), not even of an image nobody can read now.
  await repo.records.putVdis([await introducedRecord(repo, uuid, { type })]);
  getLog().info(`VDI ${uuid} introduced from image ${image}${info.hidden ? ' (hidden: a base copy)' : ''}`);
  return uuid;
}

async function renameForIntroduce(repo: Repository, image: string, uuid: string): Promise<void> {
  if (await repo.backend.hasImage(uuid)) throw new SMError('VDIExists', `the SR already has an image ${uuid}`);
  if (await repo.records.hasVdi(image)) throw new SMError('VDIExists', `image ${image} is VDI ${image} already; it keeps its uuid`);
  if ((await poolActivations(repo.backend)).has(image)) throw new SMError('VDIInUse', `image ${image} is active`);
  const { nodes } = await repo.tree();
  const children = nodes.get(image)?.children ?? [];
  if (children.length > 0) throw new SMError('VDIUnavailable', `image ${image} is the parent of ${children.join(', ')}; it cannot take the uuid ${uuid}`);
  const unknown = [...nodes.values()].find((n) => n.parentUnknown);
  if (unknown) throw new SMError('VDIUnavailable', `image ${unknown.uuid} is unreadable (${unknown.unreadable}) and may be a child of ${image}; it cannot take the uuid ${uuid}`);
  await repo.backend.renameImage(image, uuid);
  faultPoint('introduce-renamed');
  getLog().info(`image ${image} renamed to ${uuid} to be introduced under that uuid`);
}
