/**
 * SR-resident metadata: the SR's and each VDI's names and flags, stored with the
 * SR itself (so another host attaching it sees the same VDIs) and replaced
 * atomically as a whole.
 */
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
}

export interface SrMetadata {
  version: 1;
  uuid: string;
  type: string;
  name_label: string;
  name_description: string;
  created: string;
  vdis: Record<string, VdiRecord>;
}

export function newSrMetadata(uuid: string, type: string, name_label = '', name_description = ''): SrMetadata {
  return { version: 1, uuid, type, name_label, name_description, created: new Date().toISOString(), vdis: {} };
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

/**
 * Parses stored metadata, refusing anything that is not ours, or that a newer
 * version wrote (whose fields this one would drop on its next write).
 */
export function parseSrMetadata(text: string): SrMetadata {
  let m: SrMetadata;
  try {
    m = JSON.parse(text) as SrMetadata;
  } catch (err) {
    throw new Error(`not an SR metadata document (${(err as Error).message})`);
  }
  if (m !== null && typeof m === 'object' && typeof m.version === 'number' && m.version > 1) {
    throw new Error(`written by a newer version of the storage manager (metadata version ${m.version}, this one reads 1)`);
  }
  if (m === null || typeof m !== 'object' || m.version !== 1 || typeof m.uuid !== 'string' || m.vdis === null || typeof m.vdis !== 'object') {
    throw new Error('not an SR metadata document');
  }
  return m;
}
