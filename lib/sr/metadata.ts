/**
 * SR-resident metadata: the SR's and each VDI's names and flags, stored with the
 * SR itself (so another host attaching it sees the same VDIs). Layout 2 keeps
 * one small SR record and one record per VDI, each replaced atomically on its
 * own (records.ts), so a verb on one VDI reads and writes only that VDI's
 * record. Layout 1 was a single document holding every record; an SR still in
 * it is converted on the master's next attach (records.ts `convertLegacy`).
 */
import { SMError } from '../errors/sm-error.js';

export interface VdiRecord {
  uuid: string;
  name_label: string;
  name_description: string;
  /** `user`, `system`, ... as the toolstack sent it in vdi_type. */
  type: string;
  is_a_snapshot: boolean;
  snapshot_of: string;
  snapshot_time: string;
  read_only: boolean;
  /** false for hidden base copies, which the toolstack must not offer to users. */
  managed: boolean;
  metadata_of_pool: string;
  sm_config: Record<string, string>;
  /** 'reset' once the toolstack said so (vdi_attach, vdi_epoch_begin): the GC keeps its leaf, the reset point's child. */
  on_boot?: 'reset' | 'persist';
  /** The VDI has a changed-block log (cbt-logs.ts); absent in records written before CBT. */
  cbt_enabled?: boolean;
  /**
   * Recorded read-only only because, when it was introduced, an unreadable
   * image whose parent nobody knew might have been its child (vdi_delete
   * removes a writable VDI without reading the tree). The first scan that
   * reads every image makes it writable again if it has no child.
   */
  children_unknown?: boolean;
}

/** The layout this version writes and reads. */
export const LAYOUT_VERSION = 2;

/** The SR's own record (layout 2): everything but the VDIs. */
export interface SrRecord {
  version: typeof LAYOUT_VERSION;
  uuid: string;
  type: string;
  name_label: string;
  name_description: string;
  created: string;
}

/** Layout 1: one document holding the SR record and every VDI record. */
export interface LegacySrDocument extends Omit<SrRecord, 'version'> {
  version: 1;
  vdis: Record<string, VdiRecord>;
}

export function newSrRecord(uuid: string, type: string, name_label = '', name_description = ''): SrRecord {
  return { version: LAYOUT_VERSION, uuid, type, name_label, name_description, created: new Date().toISOString() };
}

export function newVdiRecord(uuid: string, fields: Partial<VdiRecord> = {}): VdiRecord {
  return {
    uuid,
    name_label: '',
    name_description: '',
    type: 'user',
    is_a_snapshot: false,
    snapshot_of: '',
    snapshot_time: '',
    read_only: false,
    managed: true,
    metadata_of_pool: '',
    sm_config: {},
    ...fields,
  };
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new Error(`not ${what} (${(err as Error).message})`);
  }
}

/** A newer version's layout is refused: its fields would be dropped on our next write. */
function refuseNewer(v: unknown, highest: number): void {
  if (isObject(v) && typeof v.version === 'number' && v.version > highest) {
    throw new Error(`written by a newer version of the storage manager (metadata version ${v.version}, this one reads up to ${LAYOUT_VERSION})`);
  }
}

/** The stored SR record, refusing anything that is not ours or that a newer version wrote. */
export function parseSrRecord(text: string): SrRecord {
  const v = parseJson(text, 'an SR record');
  refuseNewer(v, LAYOUT_VERSION);
  if (!isObject(v) || v.version !== LAYOUT_VERSION || typeof v.uuid !== 'string') throw new Error('not an SR record');
  return v as unknown as SrRecord;
}

/** A layout-1 document (converted at the master's attach), refusing anything not ours. */
export function parseLegacyDocument(text: string): LegacySrDocument {
  const v = parseJson(text, 'an SR metadata document');
  refuseNewer(v, LAYOUT_VERSION);
  if (!isObject(v) || v.version !== 1 || typeof v.uuid !== 'string' || !isObject(v.vdis)) throw new Error('not an SR metadata document');
  return v as unknown as LegacySrDocument;
}

/** Whether a stored SR payload is a layout-1 document (the MGT keeps both layouts in the same slots). */
export function isLegacyText(text: string): boolean {
  try {
    const v = JSON.parse(text) as unknown;
    return isObject(v) && v.version === 1;
  } catch {
    return false;
  }
}

/** One VDI's stored record; damaged, it is refused for that VDI only (MetadataError, 181). */
export function parseVdiRecord(text: string, uuid: string): VdiRecord {
  let v: unknown;
  try {
    v = JSON.parse(text) as unknown;
  } catch (err) {
    throw new SMError('MetadataError', `metadata record of VDI ${uuid} is damaged (${(err as Error).message}); left as it is`);
  }
  if (!isObject(v) || v.uuid !== uuid || !isObject(v.sm_config)) throw new SMError('MetadataError', `metadata record of VDI ${uuid} is not one (left as it is)`);
  return v as unknown as VdiRecord;
}

export const srRecordOf = (doc: LegacySrDocument): SrRecord => ({
  version: LAYOUT_VERSION,
  uuid: doc.uuid,
  type: doc.type,
  name_label: doc.name_label,
  name_description: doc.name_description,
  created: doc.created,
});
