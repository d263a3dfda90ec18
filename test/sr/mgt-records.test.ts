// The LVM SR's metadata volume (MGT) with one record slot per VDI, over a
// plain file standing in for the LV (it works on any positional-I/O path):
// 20,000 VDI records (the costs of verb-sized changes at 100 and 20,000 are
// logged; the bench compares them), torn writes read as the previous state,
// growth refused (SRNoSpace)
// before anything is written, and a layout-1 MGT converted exactly.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { newVdiRecord, type VdiRecord } from '../../lib/sr/metadata.js';
import { bytesForLevels, COPY, levelOffset, MgtRecordArea, MgtRecordMedium, SLOT, type MgtGrowth } from '../../lib/sr/mgt-records.js';
import { MGT_BYTES, MgtVolume } from '../../lib/sr/mgt-volume.js';
import { SrRecords } from '../../lib/sr/records.js';
import { SMError } from '../../lib/errors/sm-error.js';

const SR = '5e1ec7ed-0000-4000-8000-00000000a9e7';

/** A plain file as the MGT LV; `limit`: the most bytes the "volume group" lets it grow to. */
function mgtFile(limit = Infinity) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mgt-'));
  const file = path.join(dir, 'MGT');
  fs.writeFileSync(file, Buffer.alloc(0));
  fs.truncateSync(file, MGT_BYTES);
  const growth: MgtGrowth = {
    async ensureBytes(bytes) {
      const size = fs.statSync(file).size;
      if (size >= bytes) return false;
      if (bytes > limit) throw new SMError('SRNoSpace', `needs ${bytes} bytes`);
      fs.truncateSync(file, bytes);
      return true;
    },
  };
  const area = () => new MgtRecordArea(file, SR, growth);
  const records = new SrRecords(new MgtRecordMedium(() => new MgtVolume(file), area, () => true, async () => {}));
  return { file, area, records, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

const record = (i: number, fields: Partial<VdiRecord> = {}) => newVdiRecord(randomUUID(), { name_label: `vm${i}`, sm_config: { vdi_type: 'vhd' }, ...fields });

/** Median ms of `n` runs of `fn`. */
async function median(n: number, fn: (i: number) => Promise<unknown>): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await fn(i);
    xs.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return xs.sort((a, b) => a - b)[Math.floor(n / 2)]!;
}

/** What a verb writes: create = one record, snapshot = base copy + snapshot (commit last), delete = one removal. */
async function verbCosts(records: SrRecords, existing: string[]) {
  const made: string[] = [];
  const create = await median(31, async (i) => {
    const r = record(i);
    made.push(r.uuid);
    await records.putVdis([r]);
  });
  const snapshot = await median(31, async (i) => {
    const of = await records.getVdi(existing[i % existing.length]!);
    const base = record(i, { managed: false, read_only: true, name_label: 'base copy' });
    const snap = record(i, { is_a_snapshot: true, snapshot_of: of!.uuid });
    made.push(base.uuid, snap.uuid);
    await records.putVdis([base, snap]);
  });
  const del = await median(31, (i) => records.dropVdis([made[i]!]));
  const get = await median(31, (i) => records.getVdi(existing[(i * 7) % existing.length]!));
  await records.dropVdis(made);
  return { create, snapshot, del, get };
}

test('20,000 VDI records in the MGT volume: every record exact, create/snapshot/delete costs at 100 and 20,000 logged', async (t) => {
  const m = mgtFile();
  try {
    await m.records.writeSr({ version: 2, uuid: SR, type: 'LVMoISCSISR', name_label: 'big', name_description: '', created: new Date().toISOString() });
    const all: VdiRecord[] = [];
    const fill = async (to: number) => {
      const batch: VdiRecord[] = [];
      while (all.length + batch.length < to) batch.push(record(all.length + batch.length));
      for (let i = 0; i < batch.length; i += 500) await m.records.putVdis(batch.slice(i, i + 500));
      all.push(...batch);
    };
    await fill(100);
    const small = await verbCosts(m.records, all.map((r) => r.uuid));
    await fill(20_000);
    const big = await verbCosts(m.records, all.map((r) => r.uuid));
    const levels = await m.area().levels();
    const { records, damaged } = await m.records.listVdis();
    t.is(records.size, 20_000, 'every record is there');
    t.is(damaged.size, 0);
    for (const r of all.filter((_, i) => i % 997 === 0)) t.deepEqual(records.get(r.uuid), r, `record ${r.name_label} exact`);
    const f = (x: number) => `${x.toFixed(2)} ms`;
    t.log(`MGT record area: ${levels} levels, ${bytesForLevels(levels) / 2 ** 20} MiB for 20,000 records`);
    t.log(`p50 at 100 / 20,000 records: create ${f(small.create)} / ${f(big.create)}, snapshot ${f(small.snapshot)} / ${f(big.snapshot)}, delete ${f(small.del)} / ${f(big.del)}, read ${f(small.get)} / ${f(big.get)}`);
    // The costs are figures, not assertions (a shared machine's timings): `npm run bench -- mgt` compares them in one run.
  } finally {
    m.cleanup();
  }
});

test('a torn record write reads as the previous state; a record too large and a growth without room write nothing', async (t) => {
  const m = mgtFile(bytesForLevels(1));
  try {
    const r = record(1);
    await m.records.putVdis([r]);
    await m.records.putVdis([{ ...r, name_label: 'renamed' }]);
    // Find its slot and tear the newest copy (the one the second write went to).
    const buf = fs.readFileSync(m.file);
    let tore = false;
    for (let at = levelOffset(0); at < levelOffset(1) && !tore; at += SLOT) {
      for (const copy of [0, 1]) {
        const c = buf.subarray(at + copy * COPY, at + (copy + 1) * COPY);
        if (c.includes(Buffer.from('renamed'))) {
          const fd = fs.openSync(m.file, 'r+');
          fs.writeSync(fd, Buffer.alloc(100, 0xee), 0, 100, at + copy * COPY + 200);
          fs.closeSync(fd);
          tore = true;
        }
      }
    }
    t.true(tore);
    t.deepEqual(await m.records.getVdi(r.uuid), r, 'the copy before the torn write');

    const huge = record(2, { sm_config: { blob: 'x'.repeat(4000) } });
    const err = await t.throwsAsync(m.records.putVdis([huge]));
    t.regex(err!.message, /more than an MGT record slot holds/);
    t.is(await m.records.getVdi(huge.uuid), undefined);

    // Level 0 holds ~1,000 records; the "volume group" has no room for level 1.
    const many = Array.from({ length: 1100 }, (_, i) => record(i));
    let refused: unknown;
    for (let i = 0; i < many.length && !refused; i += 50) await m.records.putVdis(many.slice(i, i + 50)).catch((e: unknown) => (refused = e));
    t.true(refused instanceof SMError && refused.name === 'SRNoSpace', `SRNoSpace (${String(refused)})`);
    const { records } = await m.records.listVdis();
    const stored = many.filter((x) => records.has(x.uuid)).length;
    t.is(stored % 50, 0, 'the refused batch wrote none of its records');
    t.true(stored >= 300, `${stored} records stored before the refusal`);
    t.is(fs.statSync(m.file).size, bytesForLevels(1), 'the volume did not grow');
  } finally {
    m.cleanup();
  }
});

test('a layout-1 MGT (every record in the metadata slot) is converted exactly; a run killed anywhere is simply run again', async (t) => {
  const m = mgtFile();
  try {
    const vdis = Object.fromEntries(Array.from({ length: 300 }, (_, i) => record(i)).map((r) => [r.uuid, r]));
    const doc = { version: 1, uuid: SR, type: 'LVMoISCSISR', name_label: 'old', name_description: 'd', created: '2026-01-01T00:00:00.000Z', vdis };
    const volume = new MgtVolume(m.file);
    await volume.writeNext(JSON.stringify(doc));
    t.is((await m.records.readSr())?.name_label, 'old', 'read before conversion');
    t.deepEqual(await m.records.getVdi(Object.keys(vdis)[5]!), Object.values(vdis)[5], 'records readable before conversion');
    // A partial earlier run: some records, and one the document does not hold.
    await m.records.putVdis(Object.values(vdis).slice(0, 120));
    const stray = record(999);
    await m.records.putVdis([stray]);
    t.is(await m.records.convertLegacy(), 300);
    const sorted = (m2: Map<string, VdiRecord>) => [...m2].sort(([a], [b]) => a.localeCompare(b));
    t.deepEqual(sorted((await m.records.listVdis()).records), sorted(new Map(Object.entries(vdis))), 'exactly the document\'s records');
    t.deepEqual(await m.records.readSr(), { version: 2, uuid: SR, type: 'LVMoISCSISR', name_label: 'old', name_description: 'd', created: doc.created });
    t.false((await volume.readAll()).some((s) => s.payload.includes('"vdis"')), 'the old document is gone from both slots');
    t.is(await m.records.convertLegacy(), undefined, 'nothing left to do');
  } finally {
    m.cleanup();
  }
});

test("another host's view: a device that maps less than the area's header names is remapped once, then its records read (a pool host's MGT node after the master grew the LV)", async (t) => {
  const master = mgtFile();
  try {
    const r = record(1);
    await master.records.putVdis([r]); // grows the volume past MGT_BYTES: the first level
    t.true(fs.statSync(master.file).size > MGT_BYTES);
    // The other host's node: the volume as it was mapped before the growth.
    const stale = `${master.file}.other-host`;
    fs.copyFileSync(master.file, stale);
    fs.truncateSync(stale, MGT_BYTES);
    let remaps = 0;
    const growth: MgtGrowth = {
      ensureBytes: async () => t.fail('the other host never grows the volume') as never,
      remap: async () => {
        remaps++;
        fs.copyFileSync(master.file, stale); // the volume as it is now
      },
    };
    const other = new SrRecords(new MgtRecordMedium(() => new MgtVolume(stale), () => new MgtRecordArea(stale, SR, growth), () => true, async () => {}));
    t.deepEqual(await other.getVdi(r.uuid), r, 'the record reads once remapped');
    t.is(remaps, 1, 'remapped once');
    t.deepEqual(await other.getVdi(r.uuid), r);
    t.is(remaps, 1, 'a volume mapped whole is not remapped again');
    // The master's own node maps what it grew: never remapped.
    let masterRemaps = 0;
    const mine = new MgtRecordArea(master.file, SR, { ensureBytes: async () => false, remap: async () => void masterRemaps++ });
    t.is(await mine.levels(), 1);
    t.is(masterRemaps, 0, "the master's node maps the whole area");
  } finally {
    master.cleanup();
  }
});
