/**
 * The record a visible image gets when something introduces it (sr_scan,
 * vdi_introduce, vdi_update of an image without a record). vdi_delete removes
 * a writable VDI on its record's word that it has no child (vdi-delete.ts), so
 * a record is written writable only when the whole tree says so.
 */
import { getLog } from '../log/index.js';
import { newVdiRecord, type VdiRecord } from './metadata.js';
import type { ImageNode, Repository } from './repository.js';

/**
 * A record for a visible image nobody recorded. One with children is a
 * `single` snapshot: writing it would change its children, so it is read-only.
 * So is one that may have a child nobody can read now (`childrenUnknown`),
 * until a scan that reads every image says otherwise (settleChildrenUnknown).
 */
export function introducedVisible(node: ImageNode, childrenUnknown: boolean, fields: Partial<VdiRecord> = {}): VdiRecord {
  if (node.children.length > 0) return newVdiRecord(node.uuid, { ...fields, read_only: true });
  if (!childrenUnknown) return newVdiRecord(node.uuid, { ...fields, read_only: false });
  getLog().warn(`image ${node.uuid} introduced read-only: an unreadable image of unknown parent may be its child`);
  return newVdiRecord(node.uuid, { ...fields, read_only: true, children_unknown: true });
}

/** Every image reads now: a VDI recorded read-only for a child nobody could see is writable again if it has none. */
export function settleChildrenUnknown(rec: VdiRecord, node: ImageNode): void {
  delete rec.children_unknown;
  if (node.children.length > 0 || node.hidden) return;
  rec.read_only = false;
  getLog().info(`scan: VDI ${rec.uuid} has no child: writable again`);
}

/**
 * The record for image `uuid` of the SR, from the whole tree: a hidden image
 * is a base copy; an unreadable one may have children nobody sees.
 */
export async function introducedRecord(repo: Repository, uuid: string, fields: Partial<VdiRecord> = {}): Promise<VdiRecord> {
  const { nodes } = await repo.tree();
  const node = nodes.get(uuid);
  if (!node) return newVdiRecord(uuid, fields);
  if (node.hidden) return newVdiRecord(uuid, { ...fields, managed: false, read_only: true });
  return introducedVisible(node, node.unreadable !== undefined || [...nodes.values()].some((n) => n.parentUnknown), fields);
}
