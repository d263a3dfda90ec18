/**
 * The `MGT` LV of an LVM SR: SR metadata and journals on a small raw volume.
 * Layout 2 keeps only the SR record in the metadata slots; the VDI records
 * live past this region (mgt-records.ts). A layout-1 SR holds its whole
 * document in the slots until the master's attach converts it.
 *
 * Layout (positional I/O, works the same on a plain file):
 * - two metadata slots of SLOT_BYTES at 0 and SLOT_BYTES. Each holds a header
 *   [magic 8][seq u64 BE 8][length u32 BE 4][sha256(seq|length|payload) 32][pad]
 *   and the JSON payload. A write goes to the slot NOT holding the newest valid
 *   copy (slot = seq % 2) and is fsynced, so a torn write never loses the
 *   previous version: the reader takes the valid slot with the highest seq.
 * - JOURNAL_SLOTS journal slots of JOURNAL_SLOT_BYTES after them, one journal
 *   each: [magic 8][length u32][sha256(length|payload) 32][pad] + JSON
 *   {name, text}. A torn journal fails its checksum and reads as absent, which
 *   journal.ts already treats as "the change never started".
 * Writers are serialised by the SR lock (verbs and the GC journal under it).
 */
import { faultPoint } from './fault.js';
import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { withFile } from '../util/with-file.js';

export const SLOT_BYTES = 3 * 1024 * 1024;
export const JOURNAL_SLOT_BYTES = 4096;
export const JOURNAL_SLOTS = 512;
export const JOURNAL_AREA = 2 * SLOT_BYTES;
/** Bytes the MGT volume needs (8 MiB: two extents). */
export const MGT_BYTES = JOURNAL_AREA + JOURNAL_SLOTS * JOURNAL_SLOT_BYTES;

const META_MAGIC = Buffer.from('XSMMETA1');
const JOURNAL_MAGIC = Buffer.from('XSMJRNL1');
const META_HEADER = 64;
const JOURNAL_HEADER = 48;

const sha = (...parts: Buffer[]) => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
};

export interface MetaSlot {
  slot: 0 | 1;
  seq: bigint;
  payload: string;
}

/** Encodes one metadata slot (header + payload); throws when the payload does not fit. */
export function encodeMetaSlot(seq: bigint, payload: string): Buffer {
  const body = Buffer.from(payload, 'utf8');
  if (META_HEADER + body.length > SLOT_BYTES) throw new Error(`SR metadata of ${body.length} bytes exceeds the MGT slot (${SLOT_BYTES - META_HEADER})`);
  const buf = Buffer.alloc(META_HEADER + body.length);
  META_MAGIC.copy(buf, 0);
  buf.writeBigUInt64BE(seq, 8);
  buf.writeUInt32BE(body.length, 16);
  sha(buf.subarray(8, 20), body).copy(buf, 20);
  body.copy(buf, META_HEADER);
  return buf;
}

/** Decodes a slot's bytes (at least the header); undefined when empty, torn or foreign. */
export function decodeMetaSlot(buf: Buffer): { seq: bigint; length: number; payload?: string } | undefined {
  if (buf.length < META_HEADER || !buf.subarray(0, 8).equals(META_MAGIC)) return undefined;
  const seq = buf.readBigUInt64BE(8);
  const length = buf.readUInt32BE(16);
  if (META_HEADER + length > SLOT_BYTES) return undefined;
  if (buf.length < META_HEADER + length) return { seq, length }; // caller reads the rest
  const body = buf.subarray(META_HEADER, META_HEADER + length);
  if (!sha(buf.subarray(8, 20), body).equals(buf.subarray(20, 52))) return undefined;
  return { seq, length, payload: body.toString('utf8') };
}

export function encodeJournalSlot(name: string, text: string): Buffer {
  const body = Buffer.from(JSON.stringify({ name, text }), 'utf8');
  if (JOURNAL_HEADER + body.length > JOURNAL_SLOT_BYTES) throw new Error(`journal ${name} too large (${body.length} bytes)`);
  const buf = Buffer.alloc(JOURNAL_SLOT_BYTES);
  JOURNAL_MAGIC.copy(buf, 0);
  buf.writeUInt32BE(body.length, 8);
  sha(buf.subarray(8, 12), body).copy(buf, 12);
  body.copy(buf, JOURNAL_HEADER);
  return buf;
}

export function decodeJournalSlot(buf: Buffer): { name: string; text: string } | undefined {
  if (buf.length < JOURNAL_HEADER || !buf.subarray(0, 8).equals(JOURNAL_MAGIC)) return undefined;
  const length = buf.readUInt32BE(8);
  if (JOURNAL_HEADER + length > buf.length) return undefined;
  const body = buf.subarray(JOURNAL_HEADER, JOURNAL_HEADER + length);
  if (!sha(buf.subarray(8, 12), body).equals(buf.subarray(12, 44))) return undefined;
  try {
    const v = JSON.parse(body.toString('utf8')) as { name?: unknown; text?: unknown };
    return typeof v.name === 'string' && typeof v.text === 'string' ? { name: v.name, text: v.text } : undefined;
  } catch {
    return undefined;
  }
}

/** The MGT store over a path (the MGT LV's device node, or a plain file in tests). */
export class MgtVolume {
  constructor(readonly path: string) {}

  private withHandle<T>(write: boolean, fn: (fh: FileHandle) => Promise<T>): Promise<T> {
    return withFile(this.path, write, fn);
  }

  private static async readAt(fh: FileHandle, length: number, position: number): Promise<Buffer> {
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, position);
    return buf.subarray(0, bytesRead);
  }

  private async readSlots(fh: FileHandle): Promise<MetaSlot[]> {
    const out: MetaSlot[] = [];
    for (const slot of [0, 1] as const) {
      const at = slot * SLOT_BYTES;
      let d = decodeMetaSlot(await MgtVolume.readAt(fh, 64 * 1024, at));
      if (d && d.payload === undefined) d = decodeMetaSlot(await MgtVolume.readAt(fh, META_HEADER + d.length, at));
      if (d?.payload !== undefined) out.push({ slot, seq: d.seq, payload: d.payload });
    }
    return out.sort((a, b) => (a.seq < b.seq ? 1 : a.seq > b.seq ? -1 : 0));
  }

  /** Every valid slot, newest first. */
  async readAll(): Promise<MetaSlot[]> {
    return this.withHandle(false, (fh) => this.readSlots(fh));
  }

  /** The newest valid metadata document, or undefined when neither slot holds one. */
  async readNewest(): Promise<MetaSlot | undefined> {
    return this.withHandle(false, async (fh) => (await this.readSlots(fh))[0]);
  }

  /** Writes `payload` into the slot not holding the newest copy, then fsyncs. */
  async writeNext(payload: string): Promise<MetaSlot> {
    return this.withHandle(true, async (fh) => {
      const newest = (await this.readSlots(fh))[0];
      const seq = (newest?.seq ?? 0n) + 1n;
      const slot = Number(seq % 2n) as 0 | 1;
      const buf = encodeMetaSlot(seq, payload);
      await fh.write(buf, 0, buf.length, slot * SLOT_BYTES);
      await fh.sync();
      faultPoint('mgt-written');
      return { slot, seq, payload };
    });
  }

  private async journalSlots(fh: FileHandle): Promise<Array<{ name: string; text: string } | undefined>> {
    const area = await MgtVolume.readAt(fh, JOURNAL_SLOTS * JOURNAL_SLOT_BYTES, JOURNAL_AREA);
    const out: Array<{ name: string; text: string } | undefined> = [];
    for (let i = 0; i < JOURNAL_SLOTS; i++) {
      out.push(decodeJournalSlot(area.subarray(i * JOURNAL_SLOT_BYTES, (i + 1) * JOURNAL_SLOT_BYTES)));
    }
    return out;
  }

  async listJournals(): Promise<Map<string, string>> {
    return this.withHandle(false, async (fh) => {
      const m = new Map<string, string>();
      for (const j of await this.journalSlots(fh)) if (j && !m.has(j.name)) m.set(j.name, j.text);
      return m;
    });
  }

  /** Writes the journal into its existing slot or the first free one, fsynced. */
  async writeJournal(name: string, text: string): Promise<void> {
    const buf = encodeJournalSlot(name, text);
    await this.withHandle(true, async (fh) => {
      const slots = await this.journalSlots(fh);
      let i = slots.findIndex((j) => j?.name === name);
      if (i < 0) i = slots.findIndex((j) => j === undefined);
      if (i < 0) throw new Error(`MGT journal area full (${JOURNAL_SLOTS} journals)`);
      await fh.write(buf, 0, buf.length, JOURNAL_AREA + i * JOURNAL_SLOT_BYTES);
      await fh.sync();
    });
  }

  /** Clears every slot holding `name`. Not synced: a journal that reappears after a crash finds its change complete. */
  async removeJournal(name: string): Promise<void> {
    await this.withHandle(true, async (fh) => {
      const slots = await this.journalSlots(fh);
      const zero = Buffer.alloc(JOURNAL_SLOT_BYTES);
      for (const [i, j] of slots.entries()) {
        if (j?.name === name) await fh.write(zero, 0, zero.length, JOURNAL_AREA + i * JOURNAL_SLOT_BYTES);
      }
    });
  }

  /** Zeroes both metadata slot headers and the journal area (SR destroy). */
  async wipe(): Promise<void> {
    await this.withHandle(true, async (fh) => {
      const zero = Buffer.alloc(META_HEADER);
      await fh.write(zero, 0, zero.length, 0);
      await fh.write(zero, 0, zero.length, SLOT_BYTES);
      const area = Buffer.alloc(JOURNAL_SLOTS * JOURNAL_SLOT_BYTES);
      await fh.write(area, 0, area.length, JOURNAL_AREA);
      await fh.sync();
    });
  }
}
