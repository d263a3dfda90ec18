/**
 * The SR's metadata as records (layout 2), written once over any backend's
 * `RecordMedium`: one SR record, one record per VDI. A verb on one VDI reads
 * and writes only its own record; only sr_scan, the GC and `sm` list them all.
 *
 * Atomicity: each record is replaced atomically (a crash leaves the old or the
 * new record, never a torn one). A change of several records writes them in
 * the order given, so a caller puts its commit record last (a snapshot: the
 * base copy's record, then the snapshot's, whose presence is what recovery
 * reads as "committed"). The one state a crash between them can leave without
 * a journal to finish it, a hidden image without a record, is what sr_scan
 * already introduces as a base copy.
 */
import { getLog } from '../log/index.js';
import { SMError } from '../errors/sm-error.js';
import { faultPoint } from './fault.js';
import {
  isLegacyText,
  parseLegacyDocument,
  parseSrRecord,
  parseVdiRecord,
  srRecordOf,
  type SrRecord,
  type VdiRecord,
} from './metadata.js';

/** Where a backend keeps the records, as text: the one seam each backend implements. */
export interface RecordMedium {
  /** The SR record (layout 2) as stored, undefined when there is none. */
  readSrText(): Promise<string | undefined>;
  /** Atomic. */
  writeSrText(text: string): Promise<void>;
  /** The layout-1 document, when it is still the SR's metadata (no SR record yet). */
  readLegacyText(): Promise<string | undefined>;
  /** Whether any copy of a layout-1 document is left (cheap: asked at the start of every master verb). */
  hasLegacy(): Promise<boolean>;
  /** Removes what is left of the layout-1 document once the SR record exists. Idempotent. */
  removeLegacy(): Promise<void>;
  /** One VDI's record text, undefined when it has none. */
  readRecordText(uuid: string): Promise<string | undefined>;
  /** Every VDI record (sr_scan, the GC, conversion, `sm`). */
  listRecordTexts(): Promise<Map<string, string>>;
  /**
   * Each record atomically, in this order; with `after`, none becomes visible
   * before `after` resolves (none at all if it rejects).
   */
  writeRecordTexts(records: ReadonlyArray<readonly [uuid: string, text: string]>, after?: Promise<unknown>): Promise<void>;
  /** Removes records (absent ones are no error), durably. */
  removeRecordTexts(uuids: readonly string[]): Promise<void>;
}

/** Records written per step of a conversion (a fault point between steps; any batch size is correct). */
const CONVERT_BATCH = 100;

const serialise = (v: unknown) => JSON.stringify(v, null, 1) + '\n';

export class SrRecords {
  constructor(private readonly medium: RecordMedium) {}

  /**
   * The SR record: layout 2's, or the one a layout-1 document holds (before
   * its conversion); undefined when the storage holds no metadata of ours.
   * Throws (plain Error) when what is stored cannot be used: damaged, or newer.
   */
  async readSr(): Promise<SrRecord | undefined> {
    const text = await this.medium.readSrText();
    if (text !== undefined) return parseSrRecord(text);
    const legacy = await this.medium.readLegacyText();
    return legacy === undefined ? undefined : srRecordOf(parseLegacyDocument(legacy));
  }

  /** The SR's metadata as stored, parseable or not (`sm rebuild-metadata` keeps a copy). */
  async rawText(): Promise<string | undefined> {
    return (await this.medium.readSrText()) ?? (await this.medium.readLegacyText());
  }

  async writeSr(sr: SrRecord): Promise<void> {
    await this.medium.writeSrText(serialise(sr));
  }

  /** One VDI's record; a damaged one fails with MetadataError (181), for this VDI only. */
  async getVdi(uuid: string): Promise<VdiRecord | undefined> {
    const text = await this.medium.readRecordText(uuid);
    if (text !== undefined) return parseVdiRecord(text, uuid);
    return (await this.legacy())?.vdis[uuid];
  }

  /** Whether the VDI has a record, damaged or not (recovery's "committed"). */
  async hasVdi(uuid: string): Promise<boolean> {
    if ((await this.medium.readRecordText(uuid)) !== undefined) return true;
    return (await this.legacy())?.vdis[uuid] !== undefined;
  }

  async getVdis(uuids: readonly string[]): Promise<Map<string, VdiRecord>> {
    const out = new Map<string, VdiRecord>();
    for (const u of uuids) {
      const r = await this.getVdi(u);
      if (r) out.set(u, r);
    }
    return out;
  }

  /** Every record; damaged ones apart (uuid -> why), so a caller leaves them as they are. */
  async listVdis(): Promise<{ records: Map<string, VdiRecord>; damaged: Map<string, string> }> {
    const records = new Map<string, VdiRecord>();
    const damaged = new Map<string, string>();
    const legacy = await this.legacy();
    if (legacy) {
      for (const [u, r] of Object.entries(legacy.vdis)) records.set(u, r);
      return { records, damaged };
    }
    for (const [u, text] of await this.medium.listRecordTexts()) {
      try {
        records.set(u, parseVdiRecord(text, u));
      } catch (err) {
        damaged.set(u, (err as Error).message);
      }
    }
    return { records, damaged };
  }

  /** Writes records in this order (put the commit record last); with `after`, visible only once it resolves. */
  async putVdis(records: readonly VdiRecord[], opts: { after?: Promise<unknown> } = {}): Promise<void> {
    await this.medium.writeRecordTexts(
      records.map((r) => [r.uuid, serialise(r)] as const),
      opts.after,
    );
  }

  async dropVdis(uuids: readonly string[]): Promise<void> {
    if (uuids.length > 0) await this.medium.removeRecordTexts(uuids);
  }

  /** The layout-1 document while it is still the SR's metadata (a slave, or before the master's attach). */
  private async legacy() {
    if ((await this.medium.readSrText()) !== undefined) return undefined;
    const text = await this.medium.readLegacyText();
    if (text === undefined) return undefined;
    try {
      return parseLegacyDocument(text);
    } catch (err) {
      throw new SMError('MetadataError', `SR metadata unreadable: ${(err as Error).message}`);
    }
  }

  /**
   * Converts a layout-1 SR (run by the master under the SR lock, at attach and
   * before every verb; a no-op costing one look once converted). Every step is
   * idempotent, so an interrupted conversion is simply run again:
   * 1. records the document does not hold are removed (left by an interrupted
   *    conversion of an older state), then every VDI's record is written,
   *    CONVERT_BATCH at a time;
   * 2. the SR record is written: the commit, from now on the records are the
   *    metadata and the document is ignored;
   * 3. the document is removed.
   * Returns the number of records converted, undefined when nothing was to do.
   */
  async convertLegacy(): Promise<number | undefined> {
    if (!(await this.medium.hasLegacy())) return undefined;
    const current = await this.medium.readSrText();
    if (current !== undefined && !isLegacyText(current)) {
      await this.medium.removeLegacy(); // step 3 of a conversion killed after its commit
      return undefined;
    }
    const text = await this.medium.readLegacyText();
    if (text === undefined) return undefined;
    let doc;
    try {
      doc = parseLegacyDocument(text);
    } catch (err) {
      throw new SMError('MetadataError', `SR metadata cannot be converted: ${(err as Error).message}; left as it is (see \`sm rebuild-metadata\`)`);
    }
    const records = Object.values(doc.vdis);
    const kept = new Set(records.map((r) => r.uuid));
    const strays = [...(await this.medium.listRecordTexts()).keys()].filter((u) => !kept.has(u));
    await this.dropVdis(strays);
    for (let i = 0; i < records.length; i += CONVERT_BATCH) {
      await this.putVdis(records.slice(i, i + CONVERT_BATCH));
      faultPoint('convert-batch-written');
    }
    faultPoint('convert-records-written');
    await this.writeSr(srRecordOf(doc));
    faultPoint('convert-sr-written');
    await this.medium.removeLegacy();
    getLog().info(`SR ${doc.uuid}: metadata converted to one record per VDI (${records.length} records)`);
    return records.length;
  }
}
