/**
 * sr_scan: the images are the truth for what exists, the metadata for names and
 * flags. Records without an image are dropped; images without a record get one
 * (hidden images as unmanaged base copies). Only the records that change are
 * written; a damaged record is left as it is and its VDI not reported.
 */
import { readLog } from '../cbt/index.js';
import { getLog } from '../log/index.js';
import { mapLimit } from '../util/map-limit.js';
import { cbtLogPath, hasCbtLog } from './cbt-logs.js';
import { readJournals } from './journal.js';
import { introducedVisible, settleChildrenUnknown } from './introduced-record.js';
import { newVdiRecord, type VdiRecord } from './metadata.js';
import type { ImageNode, Repository } from './repository.js';

/** A VDI as sr_scan reports it (JSON-RPC result, `sm sr-scan`). */
export interface ScannedVdi extends VdiRecord {
  location: string;
  virtual_size: number;
  physical_utilisation: number;
  hidden: boolean;
  parent: string;
}

export async function scanSr(repo: Repository): Promise<ScannedVdi[]> {
  return (await scanSrDetailed(repo)).vdis;
}

/** What a scan saw, for keeping the toolstack's database in step (xapi-sync.ts). */
export interface ScanDetail {
  vdis: ScannedVdi[];
  nodes: Map<string, ImageNode>;
  /** Every readable, undamaged record after the scan. */
  records: Map<string, VdiRecord>;
  /** Images whose state is not known now: a journaled change in progress, or a damaged record. */
  unsettled: Set<string>;
}

export async function scanSrDetailed(repo: Repository): Promise<ScanDetail> {
  await repo.srRecord(); // no SR metadata at all is refused (MetadataError) before anything changes
  // Independent reads (the SR lock keeps both still): records and images side by side.
  const [{ records, damaged }, { nodes }] = await Promise.all([repo.records.listVdis(), repo.tree()]);
  // A change in progress (or interrupted) may have an image briefly away: keep its records.
  const pending = new Set((await readJournals(repo.backend)).flatMap((j) => Object.values(j).filter((v) => typeof v === 'string')));
  // Which VDIs have a changed-block log (cbt_enabled); one whose image is gone is a cbt_metadata VDI, kept.
  const uuids = [...new Set([...records.keys(), ...damaged.keys(), ...nodes.keys()])];
  const logged = new Set((await mapLimit(uuids, 64, async (u) => ((await hasCbtLog(repo, u)) ? u : undefined))).filter((u): u is string => !!u));
  const drop: string[] = [];
  const put: VdiRecord[] = [];
  // An unreadable image whose parent is unknown may be the child of any image: no visible one is introduced writable then.
  const childrenUnknown = [...nodes.values()].some((n) => n.parentUnknown);
  for (const uuid of [...records.keys(), ...damaged.keys()]) {
    if (!nodes.has(uuid) && !pending.has(uuid) && !logged.has(uuid)) {
      getLog().info(`scan: VDI ${uuid} has no image any more: record dropped`);
      drop.push(uuid);
      records.delete(uuid);
    }
  }
  for (const node of nodes.values()) {
    const rec = records.get(node.uuid);
    if (node.unreadable !== undefined) {
      // Its record (if any) stays as it is: what the image says is unknown until it reads again.
      getLog().warn(`scan: image ${node.uuid} is unreadable, its record kept as it is: ${node.unreadable}`);
      continue;
    }
    if (damaged.has(node.uuid)) {
      // Never written over: `sm rebuild-metadata` is the operator's way back; until then verbs on this VDI fail.
      getLog().warn(`scan: ${damaged.get(node.uuid)}`);
      continue;
    }
    if (!rec) {
      getLog().info(`scan: image ${node.uuid} had no record: introduced${node.hidden ? ' as a base copy' : ''}`);
      const made = node.hidden ? newVdiRecord(node.uuid, { managed: false, read_only: true, name_label: 'base copy' }) : introducedVisible(node, childrenUnknown);
      records.set(node.uuid, made);
      put.push(made);
    } else if (rec.managed === node.hidden) {
      // Hidden by a delete that left children, or unhidden by the GC's leaf-coalesce.
      rec.managed = !node.hidden;
      put.push(rec);
    }
    const rec2 = records.get(node.uuid)!;
    if (rec2.children_unknown && !childrenUnknown) {
      settleChildrenUnknown(rec2, node);
      if (!put.includes(rec2)) put.push(rec2);
    }
    // A log created or removed by a verb killed before it wrote the record.
    if ((rec2.cbt_enabled ?? false) !== logged.has(node.uuid)) {
      rec2.cbt_enabled = logged.has(node.uuid);
      if (!put.includes(rec2)) put.push(rec2);
    }
  }
  const metadataOnly = [...records.values()].filter((r) => !nodes.has(r.uuid) && logged.has(r.uuid));
  for (const rec of metadataOnly) {
    if (rec.type === 'cbt_metadata' && rec.cbt_enabled) continue;
    rec.type = 'cbt_metadata';
    rec.cbt_enabled = true;
    put.push(rec);
  }
  await repo.records.dropVdis(drop);
  await repo.records.putVdis(put);
  const images = [...nodes.values()].filter((n) => n.unreadable === undefined && records.has(n.uuid)).map((n) => scanned(records.get(n.uuid)!, n));
  const vdis = [...images, ...(await mapLimit(metadataOnly, 16, (r) => scannedLogOnly(repo, r)))];
  return { vdis, nodes, records, unsettled: new Set([...pending, ...damaged.keys()]) };
}

/** A cbt_metadata VDI: its data destroyed, its changed-block log kept (the size is the log's). */
async function scannedLogOnly(repo: Repository, rec: VdiRecord): Promise<ScannedVdi> {
  const size = await cbtLogPath(repo, rec.uuid).then(readLog).then(
    (l) => l.size,
    () => 0,
  );
  return { ...rec, location: rec.uuid, virtual_size: size, physical_utilisation: 0, hidden: false, parent: '' };
}

function scanned(rec: VdiRecord, node: ImageNode): ScannedVdi {
  return {
    ...rec,
    cbt_enabled: rec.cbt_enabled ?? false,
    location: node.uuid,
    virtual_size: node.virtualSize,
    physical_utilisation: node.physicalSize,
    hidden: node.hidden,
    parent: node.parent ?? '',
  };
}
