/**
 * The VDI records of an LVM SR in its `MGT` LV, past the layout-1 region
 * (mgt-volume.ts: SR slots and journal slots, the first MGT_BYTES). Works on
 * any positional-I/O path: the LV's device node, or a plain file in tests.
 *
 * Layout from RECORD_AREA (offsets from the LV's start):
 * - area header, two copies of HEADER_COPY bytes at RECORD_AREA and
 *   RECORD_AREA + HEADER_COPY: [magic 8][seq u64 8][levels u32 4]
 *   [sha256(sr uuid|seq|levels) 32]; the valid copy with the higher seq counts.
 * - levels from LEVELS_AT: level k holds BASE_SLOTS << k slots of SLOT bytes,
 *   right after level k-1. A slot is two copies of COPY bytes:
 *   [magic 8][seq u64 8][flags u32 4: 1 = removed][uuid 16][length u32 4]
 *   [sha256(sr uuid|seq|flags|uuid|length|payload) 32][pad to COPY_HEADER] + the record's JSON.
 *   A write goes to the copy not holding the slot's newest valid one, so a
 *   torn write (checksum fails) leaves the previous state: a record's update,
 *   removal or first write is atomic. The sr uuid in every checksum makes
 *   bytes an older SR left on the same extents read as empty.
 * - where a record lives: hash(uuid) picks a home slot in each level; a record
 *   sits within PROBE slots after its home in one level. Finding it reads one
 *   window of PROBE slots per level, whatever the number of records; a new
 *   record takes a free slot (empty or removed) of some window, and when every
 *   window is full a level twice the size of the last is added.
 *
 * Growing: the LV is extended (`ensureBytes`: lvextend, or SRNoSpace before
 * anything is written), the new level zeroed and synced, then the header
 * naming it written. Killed before the header, the next growth reuses the room.
 */
import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { withFile } from '../util/with-file.js';
import { SMError } from '../errors/sm-error.js';
import { faultPoint } from './fault.js';
import { isLegacyText } from './metadata.js';
import { MGT_BYTES, type MetaSlot, type MgtVolume } from './mgt-volume.js';
import type { RecordMedium } from './records.js';

export const RECORD_AREA = MGT_BYTES;
export const HEADER_COPY = 4096;
export const LEVELS_AT = RECORD_AREA + 64 * 1024;
export const COPY = 2048;
export const SLOT = 2 * COPY;
export const BASE_SLOTS = 1024;
export const PROBE = 16;
const COPY_HEADER = 80;
/** The largest record a slot holds (bytes of JSON). */
export const MAX_RECORD_BYTES = COPY - COPY_HEADER;

const HEADER_MAGIC = Buffer.from('XSMRIDX1');
const RECORD_MAGIC = Buffer.from('XSMREC02');
const REMOVED = 1;

export const levelSlots = (k: number) => BASE_SLOTS * 2 ** k;
export const levelOffset = (k: number) => LEVELS_AT + BASE_SLOTS * (2 ** k - 1) * SLOT;
/** Bytes the MGT volume needs for this many levels. */
export const bytesForLevels = (levels: number) => levelOffset(levels);

const uuidBytes = (u: string) => Buffer.from(u.replace(/-/g, ''), 'hex');
const uuidOf = (b: Buffer) => {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
};

/** One slot's newest valid copy. */
interface SlotState {
  seq: bigint;
  removed: boolean;
  uuid: string;
  text: string;
  /** Which copy holds it (0 or 1). */
  copy: 0 | 1;
}

interface Place {
  level: number;
  index: number;
  state: SlotState | undefined;
}

export interface MgtGrowth {
  /** Makes the volume at least this long; true if the new bytes read as zeros already (a plain file). */
  ensureBytes(bytes: number): Promise<boolean>;
  /**
   * The volume's device maps less than its header names: another host grew
   * it (LVM: a pool host's device node keeps the size it was activated with).
   * Maps it as it is now.
   */
  remap?(): Promise<void>;
}

export class MgtRecordArea {
  private readonly sr: Buffer;

  constructor(
    readonly path: string,
    srUuid: string,
    private readonly growth: MgtGrowth,
  ) {
    this.sr = uuidBytes(srUuid);
  }

  private sha(...parts: Buffer[]): Buffer {
    const h = createHash('sha256').update(this.sr);
    for (const p of parts) h.update(p);
    return h.digest();
  }

  private checkedMapping = false;

  private async withHandle<T>(write: boolean, fn: (fh: FileHandle) => Promise<T>): Promise<T> {
    if (!this.checkedMapping && this.growth.remap) {
      this.checkedMapping = true;
      if (!(await withFile(this.path, false, (fh) => this.mapsArea(fh)))) await this.growth.remap();
    }
    return withFile(this.path, write, fn);
  }

  /** Whether the volume reaches as far as the header, and as far as the levels it names. */
  private async mapsArea(fh: FileHandle): Promise<boolean> {
    const reaches = async (bytes: number) => (await fh.read(Buffer.alloc(1), 0, 1, bytes - 1).catch(() => ({ bytesRead: 0 }))).bytesRead === 1;
    if (!(await reaches(RECORD_AREA + 2 * HEADER_COPY))) return false;
    const header = await this.readHeader(fh);
    return header === undefined || (await reaches(bytesForLevels(header.levels)));
  }

  private static async readAt(fh: FileHandle, length: number, position: number): Promise<Buffer> {
    const buf = Buffer.alloc(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await fh.read(buf, got, length - got, position + got).catch(() => ({ bytesRead: 0 }));
      if (bytesRead === 0) break; // past the end: reads as zeros
      got += bytesRead;
    }
    return buf;
  }

  // --- area header ---

  private decodeHeader(b: Buffer): { seq: bigint; levels: number } | undefined {
    if (!b.subarray(0, 8).equals(HEADER_MAGIC)) return undefined;
    if (!this.sha(b.subarray(8, 20)).equals(b.subarray(20, 52))) return undefined;
    return { seq: b.readBigUInt64BE(8), levels: b.readUInt32BE(16) };
  }

  private async readHeader(fh: FileHandle): Promise<{ seq: bigint; levels: number; copy: 0 | 1 } | undefined> {
    const b = await MgtRecordArea.readAt(fh, 2 * HEADER_COPY, RECORD_AREA);
    const copies = ([0, 1] as const)
      .map((copy) => ({ copy, h: this.decodeHeader(b.subarray(copy * HEADER_COPY, (copy + 1) * HEADER_COPY)) }))
      .filter((c) => c.h !== undefined);
    copies.sort((a, b2) => (a.h!.seq > b2.h!.seq ? -1 : 1));
    const top = copies[0];
    return top && { seq: top.h!.seq, levels: top.h!.levels, copy: top.copy };
  }

  async levels(): Promise<number> {
    return this.withHandle(false, async (fh) => (await this.readHeader(fh))?.levels ?? 0);
  }

  // --- slots ---

  private decodeCopy(b: Buffer): Omit<SlotState, 'copy'> | undefined {
    if (!b.subarray(0, 8).equals(RECORD_MAGIC)) return undefined;
    const length = b.readUInt32BE(36);
    if (COPY_HEADER + length > COPY) return undefined;
    const payload = b.subarray(COPY_HEADER, COPY_HEADER + length);
    if (!this.sha(b.subarray(8, 40), payload).equals(b.subarray(40, 72))) return undefined;
    return { seq: b.readBigUInt64BE(8), removed: (b.readUInt32BE(16) & REMOVED) !== 0, uuid: uuidOf(b.subarray(20, 36)), text: payload.toString('utf8') };
  }

  private decodeSlot(b: Buffer): SlotState | undefined {
    const a = this.decodeCopy(b.subarray(0, COPY));
    const c = this.decodeCopy(b.subarray(COPY, SLOT));
    if (a && (!c || a.seq > c.seq)) return { ...a, copy: 0 };
    if (c) return { ...c, copy: 1 };
    return undefined;
  }

  private encodeCopy(seq: bigint, uuid: string, text: string | undefined): Buffer {
    const payload = Buffer.from(text ?? '', 'utf8');
    if (COPY_HEADER + payload.length > COPY) throw new SMError('MetadataError', `the metadata record of ${uuid} is ${payload.length} bytes, more than an MGT record slot holds (${MAX_RECORD_BYTES}); nothing written`);
    const b = Buffer.alloc(COPY);
    RECORD_MAGIC.copy(b, 0);
    b.writeBigUInt64BE(seq, 8);
    b.writeUInt32BE(text === undefined ? REMOVED : 0, 16);
    uuidBytes(uuid).copy(b, 20);
    b.writeUInt32BE(payload.length, 36);
    this.sha(b.subarray(8, 40), payload).copy(b, 40);
    payload.copy(b, COPY_HEADER);
    return b;
  }

  private home(uuid: string, level: number): number {
    const h = createHash('sha256').update(uuid).digest();
    return h.readUIntBE(0, 6) % levelSlots(level);
  }

  /** The PROBE slots from `uuid`'s home in `level` (wrapping at the level's end). */
  private async window(fh: FileHandle, uuid: string, level: number): Promise<Place[]> {
    const slots = levelSlots(level);
    const home = this.home(uuid, level);
    const first = Math.min(PROBE, slots - home);
    const bufs = [await MgtRecordArea.readAt(fh, first * SLOT, levelOffset(level) + home * SLOT)];
    if (first < PROBE) bufs.push(await MgtRecordArea.readAt(fh, (PROBE - first) * SLOT, levelOffset(level)));
    const all = Buffer.concat(bufs);
    return Array.from({ length: PROBE }, (_, i) => ({
      level,
      index: (home + i) % slots,
      state: this.decodeSlot(all.subarray(i * SLOT, (i + 1) * SLOT)),
    }));
  }

  private async find(fh: FileHandle, uuid: string, levels: number): Promise<{ found?: Place; free: Place[] }> {
    const free: Place[] = [];
    for (let k = 0; k < levels; k++) {
      for (const p of await this.window(fh, uuid, k)) {
        if (p.state && !p.state.removed && p.state.uuid === uuid) return { found: p, free };
        if (!p.state || p.state.removed) free.push(p);
      }
    }
    return { free };
  }

  async read(uuid: string): Promise<string | undefined> {
    return this.withHandle(false, async (fh) => {
      const levels = (await this.readHeader(fh))?.levels ?? 0;
      return (await this.find(fh, uuid, levels)).found?.state!.text;
    });
  }

  /** Every live record (reads the whole area: for scans). */
  async list(): Promise<Map<string, string>> {
    return this.withHandle(false, async (fh) => {
      const out = new Map<string, string>();
      const levels = (await this.readHeader(fh))?.levels ?? 0;
      const chunk = 256;
      for (let k = 0; k < levels; k++) {
        for (let i = 0; i < levelSlots(k); i += chunk) {
          const b = await MgtRecordArea.readAt(fh, chunk * SLOT, levelOffset(k) + i * SLOT);
          for (let j = 0; j < chunk; j++) {
            const s = this.decodeSlot(b.subarray(j * SLOT, (j + 1) * SLOT));
            if (s && !s.removed) out.set(s.uuid, s.text);
          }
        }
      }
      return out;
    });
  }

  /**
   * Writes (text) or removes (undefined) records, each atomically, in this
   * order, then one fsync. Every slot is chosen before anything is written:
   * when the area must grow and cannot (SRNoSpace), nothing is written.
   */
  async write(changes: ReadonlyArray<readonly [uuid: string, text: string | undefined]>): Promise<void> {
    const encoded = changes.map(([u, t]) => [u, t, this.encodeCopy(0n, u, t)] as const); // size checks first
    for (;;) {
      const planned = await this.withHandle(true, async (fh) => {
        const levels = (await this.readHeader(fh))?.levels ?? 0;
        const plan: Array<{ uuid: string; text: string | undefined; place: Place }> = [];
        const claimed = new Set<string>();
        for (const [uuid, text] of encoded) {
          const { found, free } = await this.find(fh, uuid, levels);
          if (found) plan.push({ uuid, text, place: found });
          else if (text === undefined) continue; // removing what is absent
          else {
            const place = free.find((p) => !claimed.has(`${p.level}/${p.index}`));
            if (!place) return { grow: levels };
            claimed.add(`${place.level}/${place.index}`);
            plan.push({ uuid, text, place });
          }
        }
        for (const { uuid, text, place } of plan) {
          const seq = (place.state?.seq ?? 0n) + 1n;
          const copy = place.state ? 1 - place.state.copy : 0;
          const b = this.encodeCopy(seq, uuid, text);
          await fh.write(b, 0, COPY, levelOffset(place.level) + place.index * SLOT + copy * COPY);
        }
        if (plan.length > 0) {
          await fh.sync();
          faultPoint('mgt-written');
        }
        return undefined;
      });
      if (!planned) return;
      await this.grow(planned.grow);
    }
  }

  /** Adds level `levels` (see the file's comment); SRNoSpace from ensureBytes leaves everything as it was. */
  private async grow(levels: number): Promise<void> {
    const zeroed = await this.growth.ensureBytes(bytesForLevels(levels + 1));
    await this.withHandle(true, async (fh) => {
      const header = await this.readHeader(fh);
      if ((header?.levels ?? 0) !== levels) return; // grown meanwhile (a retry)
      if (!zeroed) {
        const zero = Buffer.alloc(1024 * 1024);
        const from = levels === 0 ? RECORD_AREA : levelOffset(levels);
        const to = bytesForLevels(levels + 1);
        for (let at = from; at < to; at += zero.length) await fh.write(zero, 0, Math.min(zero.length, to - at), at);
        await fh.sync();
      }
      const seq = (levels === 0 ? 0n : header!.seq) + 1n;
      const b = Buffer.alloc(HEADER_COPY);
      HEADER_MAGIC.copy(b, 0);
      b.writeBigUInt64BE(seq, 8);
      b.writeUInt32BE(levels + 1, 16);
      this.sha(b.subarray(8, 20)).copy(b, 20);
      const copy = header ? 1 - header.copy : 0;
      await fh.write(b, 0, HEADER_COPY, RECORD_AREA + copy * HEADER_COPY);
      await fh.sync();
    });
  }
}

/** The records of an LVM SR: the SR record in the MGT's metadata slots, the VDI records in its record area. */
export class MgtRecordMedium implements RecordMedium {
  constructor(
    private readonly volume: () => MgtVolume,
    private readonly area: () => MgtRecordArea,
    /** Whether the MGT LV exists (no metadata at all when it does not). */
    private readonly present: () => boolean,
    /** Creates the MGT LV when missing (sr_create, or adopting storage). */
    private readonly ensure: () => Promise<void>,
  ) {}

  private async slots(): Promise<MetaSlot[]> {
    return this.present() ? this.volume().readAll() : [];
  }

  async readSrText(): Promise<string | undefined> {
    const newest = (await this.slots())[0];
    return newest && !isLegacyText(newest.payload) ? newest.payload : undefined;
  }

  async writeSrText(text: string): Promise<void> {
    await this.ensure();
    await this.volume().writeNext(text);
  }

  async readLegacyText(): Promise<string | undefined> {
    return (await this.slots()).find((s) => isLegacyText(s.payload))?.payload;
  }

  async hasLegacy(): Promise<boolean> {
    return (await this.readLegacyText()) !== undefined;
  }

  /** The slot holding the old document is written over with the SR record (the next slot written is that one). */
  async removeLegacy(): Promise<void> {
    const [newest, older] = await this.slots();
    if (newest && !isLegacyText(newest.payload) && older && isLegacyText(older.payload)) await this.volume().writeNext(newest.payload);
  }

  async readRecordText(uuid: string): Promise<string | undefined> {
    return this.present() ? this.area().read(uuid) : undefined;
  }

  async listRecordTexts(): Promise<Map<string, string>> {
    return this.present() ? this.area().list() : new Map();
  }

  async writeRecordTexts(records: ReadonlyArray<readonly [string, string]>, after?: Promise<unknown>): Promise<void> {
    await Promise.all([this.ensure(), after]);
    if (records.length > 0) await this.area().write(records);
  }

  async removeRecordTexts(uuids: readonly string[]): Promise<void> {
    if (this.present()) await this.area().write(uuids.map((u) => [u, undefined] as const));
  }
}
