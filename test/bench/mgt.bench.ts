/**
 * The LVM SR's metadata volume (mgt-records.ts) over a plain file standing in
 * for the MGT LV: what a verb writes (create: one record; snapshot: base copy +
 * snapshot; delete: one removal) at 100 and at 20,000 VDI records, same run.
 */
import { randomUUID } from 'node:crypto';
import { truncateSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { newVdiRecord, type VdiRecord } from '../../lib/sr/metadata.js';
import { bytesForLevels, MgtRecordArea, MgtRecordMedium } from '../../lib/sr/mgt-records.js';
import { MGT_BYTES, MgtVolume } from '../../lib/sr/mgt-volume.js';
import { SrRecords } from '../../lib/sr/records.js';
import { percentile, report, timed, workDir } from './measure.js';

const SR = '5e1ec7ed-0000-4000-8000-00000000a9e7';

const record = (i: number, fields: Partial<VdiRecord> = {}) => newVdiRecord(randomUUID(), { name_label: `vm${i}`, sm_config: { vdi_type: 'vhd' }, ...fields });

async function costs(records: SrRecords, existing: string[]) {
  const made: string[] = [];
  const create: number[] = [];
  const snapshot: number[] = [];
  const del: number[] = [];
  for (let i = 0; i < 50; i++) {
    const r = record(i);
    made.push(r.uuid);
    create.push((await timed(() => records.putVdis([r]))).ms);
    const of = existing[(i * 37) % existing.length]!;
    const base = record(i, { managed: false, read_only: true, name_label: 'base copy' });
    const snap = record(i, { is_a_snapshot: true, snapshot_of: of });
    made.push(base.uuid, snap.uuid);
    snapshot.push((await timed(async () => records.putVdis([base, { ...snap, ...(await records.getVdi(of))!, uuid: snap.uuid }]))).ms);
  }
  for (const u of made) del.push((await timed(() => records.dropVdis([u]))).ms);
  return { create: percentile(create, 50), snapshot: percentile(snapshot, 50), del: percentile(del, 50) };
}

export async function runMgtBenchmarks(): Promise<void> {
  const { dir, cleanup } = workDir('mgt');
  try {
    const file = join(dir, 'MGT');
    writeFileSync(file, '');
    truncateSync(file, MGT_BYTES);
    const area = () =>
      new MgtRecordArea(file, SR, {
        async ensureBytes(bytes) {
          if (statSync(file).size >= bytes) return false;
          truncateSync(file, bytes);
          return true;
        },
      });
    const records = new SrRecords(new MgtRecordMedium(() => new MgtVolume(file), area, () => true, async () => {}));
    const all: string[] = [];
    const fill = async (to: number) => {
      while (all.length < to) {
        const batch = Array.from({ length: Math.min(500, to - all.length) }, (_, i) => record(all.length + i));
        await records.putVdis(batch);
        all.push(...batch.map((r) => r.uuid));
      }
    };
    await fill(100);
    const small = await costs(records, all);
    const fillTime = (await timed(() => fill(20_000))).ms;
    const big = await costs(records, all);
    const scan = await timed(() => records.listVdis());
    const levels = await area().levels();
    const f = (x: number) => `${x.toFixed(2)} ms`;
    report('LVM metadata volume (MGT record area over a plain file), p50 of 50 each', [
      ['100 records: create / snapshot (2 records) / delete', `${f(small.create)} / ${f(small.snapshot)} / ${f(small.del)}`],
      ['20,000 records: create / snapshot (2 records) / delete', `${f(big.create)} / ${f(big.snapshot)} / ${f(big.del)}`],
      ['ratio 20,000 / 100: create, snapshot, delete', `${(big.create / small.create).toFixed(2)}, ${(big.snapshot / small.snapshot).toFixed(2)}, ${(big.del / small.del).toFixed(2)}`],
      ['listing all 20,000 records (sr_scan, GC)', `${scan.ms.toFixed(0)} ms (${scan.value.records.size} records)`],
      ['volume for 20,000 records', `${levels} levels, ${(bytesForLevels(levels) / 2 ** 20).toFixed(0)} MiB (filled in ${(fillTime / 1000).toFixed(1)} s, batches of 500)`],
    ]);
  } finally {
    cleanup();
  }
}
