// LVMoISCSI pieces that need no kernel: the probe XML documents, the thick LV
// size arithmetic (checked against real images written to the last block), and
// the MGT volume's two-slot metadata and journal slots on a plain file standing
// in for the MGT LV, torn writes included.
import { mkdtemp, open, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { parseStringPromise } from 'xml2js';
import { iqnListXml, lunListXml, srListXml, unsharedTargets } from '../../drivers/lvmoiscsi-sr.js';
import { listAttachRecords, writeAttachRecord } from '../../lib/sr/attach-record.js';
import { EXTENT_BYTES } from '../../lib/os/lvm.js';
import { deflatedSizeFor, fullImageBytes, thickSizeFor } from '../../lib/sr/lvm-sizes.js';
import { JOURNAL_AREA, JOURNAL_SLOT_BYTES, JOURNAL_SLOTS, MGT_BYTES, MgtVolume, SLOT_BYTES } from '../../lib/sr/mgt-volume.js';
import { batRoomFor } from '../../lib/sr/sizes.js';
import { BLOCK_SIZE, createDifferencing, createDynamic, VhdImage, writeAt } from '../../lib/vhd/index.js';

const MiB = 1024 * 1024;

async function scratch(t: { teardown: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'lvm-host-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('probe documents: target IQNs, LUNs and SRlist parse as the toolstack expects', async (t) => {
  const iqns = await parseStringPromise(
    iqnListXml([
      { address: '10.0.0.1', iqn: 'iqn.2024-01.a:one' },
      { address: '10.0.0.1', iqn: 'iqn.2024-01.a:two' },
    ]),
  );
  t.deepEqual(iqns['iscsi-target-iqns'].TGT, [
    { Index: ['0'], IPAddress: ['10.0.0.1'], TargetIQN: ['iqn.2024-01.a:one'] },
    { Index: ['1'], IPAddress: ['10.0.0.1'], TargetIQN: ['iqn.2024-01.a:two'] },
  ]);
  const luns = await parseStringPromise(lunListXml([{ vendor: 'IET', serial: 'beaf11', lun: 1, size: 536870912, scsiId: '360000000000000000e00000000010001' }]));
  t.deepEqual(luns['iscsi-target'].LUN, [{ vendor: ['IET'], serial: ['beaf11'], LUNid: ['1'], size: ['536870912'], SCSIid: ['360000000000000000e00000000010001'] }]);
  const srs = await parseStringPromise(srListXml([{ uuid: 'u1', device: '/dev/disk/by-id/scsi-x', size: 100 }]));
  t.deepEqual(srs.SRlist.SR, [{ UUID: ['u1'], Devlist: ['/dev/disk/by-id/scsi-x'], size: ['100'] }]);
  t.regex(srListXml([]), /<SRlist\/>/);
  t.regex(lunListXml([{ vendor: 'a<b&', serial: '', lun: 2, size: 1, scsiId: 'x' }]), /<vendor>a&lt;b&amp;<\/vendor>/);
});

test('thick LV size: a fully written differencing image fits exactly; sizes are whole extents', async (t) => {
  const dir = await scratch(t);
  for (const size of [2 * MiB, 10 * MiB, 64 * MiB]) {
    const parent = join(dir, `p-${size}.vhd`);
    const child = join(dir, `c-${size}.vhd`);
    await createDynamic(parent, size, { maxSize: batRoomFor(size) });
    await createDifferencing(child, parent);
    // every block, one write each, in reverse order (placement must not depend on order)
    for (let b = size / BLOCK_SIZE - 1; b >= 0; b--) await writeAt(child, Buffer.alloc(BLOCK_SIZE, 0x5a), b * BLOCK_SIZE);
    const fileBytes = (await stat(child)).size; // a file image ends with its footer, as a full LV does
    t.is(fileBytes, fullImageBytes(size, batRoomFor(size)), `size ${size}`);
    const thick = thickSizeFor(size, batRoomFor(size));
    t.is(thick % EXTENT_BYTES, 0);
    t.true(thick >= fileBytes && thick - fileBytes < EXTENT_BYTES);
    const image = await VhdImage.open(child, false);
    try {
      t.is(image.usedBytes, fileBytes);
      t.true(deflatedSizeFor(image.usedBytes) <= thick);
    } finally {
      await image.close();
    }
  }
  // 64 MiB with the 64 GiB BAT room (128 KiB BAT): 32 blocks of 2 MiB + 4 KiB each, plus metadata, in 68 MiB
  t.is(thickSizeFor(64 * MiB, batRoomFor(64 * MiB)), 68 * MiB);
});

test('deflated size: what the image uses, rounded up to 4 MiB, never zero', (t) => {
  t.is(deflatedSizeFor(1), EXTENT_BYTES);
  t.is(deflatedSizeFor(EXTENT_BYTES), EXTENT_BYTES);
  t.is(deflatedSizeFor(EXTENT_BYTES + 512), 2 * EXTENT_BYTES);
});

async function mgtFile(dir: string): Promise<MgtVolume> {
  const path = join(dir, 'MGT');
  await writeFile(path, Buffer.alloc(MGT_BYTES, 0xee)); // garbage, as an LV over old data
  const v = new MgtVolume(path);
  await v.wipe();
  return v;
}

async function corrupt(path: string, at: number): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, at);
  } finally {
    await fh.close();
  }
}

test('MGT metadata: two alternating slots; the newest valid copy wins; a torn write keeps the previous version', async (t) => {
  const dir = await scratch(t);
  const v = await mgtFile(dir);
  t.is(await v.readNewest(), undefined);
  const w1 = await v.writeNext('{"n":1}');
  const w2 = await v.writeNext('{"n":2}');
  t.not(w1.slot, w2.slot);
  t.is((await v.readNewest())?.payload, '{"n":2}');
  const w3 = await v.writeNext('{"n":3,"pad":"' + 'x'.repeat(100_000) + '"}');
  t.is(w3.slot, w1.slot);
  // torn: the payload of the newest copy half-written (one byte differs from its checksum)
  await corrupt(v.path, w3.slot * SLOT_BYTES + 64 + 50_000);
  t.is((await v.readNewest())?.payload, '{"n":2}');
  // the next write goes over the torn slot, never over the surviving one
  const w4 = await v.writeNext('{"n":4}');
  t.is(w4.slot, w3.slot);
  t.is(w4.seq, 3n);
  t.is((await v.readNewest())?.payload, '{"n":4}');
  // a torn header (magic) also falls back
  await corrupt(v.path, w4.slot * SLOT_BYTES);
  t.is((await v.readNewest())?.payload, '{"n":2}');
  await v.wipe();
  t.is(await v.readNewest(), undefined);
  await t.throwsAsync(v.writeNext('x'.repeat(SLOT_BYTES)), { message: /exceeds the MGT slot/ });
});

test('MGT journals: write, rewrite, list, remove; a torn journal reads as absent; a full area refuses', async (t) => {
  const dir = await scratch(t);
  const v = await mgtFile(dir);
  await v.writeJournal('create-a', '{"kind":"create"}');
  await v.writeJournal('snapshot-b', '{"kind":"snapshot"}');
  await v.writeJournal('create-a', '{"kind":"create","again":1}');
  t.deepEqual([...(await v.listJournals())], [
    ['create-a', '{"kind":"create","again":1}'],
    ['snapshot-b', '{"kind":"snapshot"}'],
  ]);
  await v.removeJournal('create-a');
  t.deepEqual([...(await v.listJournals()).keys()], ['snapshot-b']);
  // snapshot-b sits in slot 1 (slot 0 was freed): tear it
  await corrupt(v.path, JOURNAL_AREA + 1 * JOURNAL_SLOT_BYTES + 60);
  t.deepEqual([...(await v.listJournals()).keys()], []);
  for (let i = 0; i < JOURNAL_SLOTS; i++) await v.writeJournal(`j-${i}`, '{}');
  await t.throwsAsync(v.writeJournal('one-more', '{}'), { message: /journal area full/ });
  // metadata slots are untouched by journals
  await v.writeNext('{"m":1}');
  t.is((await v.readNewest())?.payload, '{"m":1}');
  t.is((await v.listJournals()).size, JOURNAL_SLOTS);
});

test('detach keeps a session another attached SR uses: unsharedTargets over the host\'s attach records', async (t) => {
  const dir = await scratch(t);
  const saved = process.env.SM_ROOT;
  process.env.SM_ROOT = dir;
  t.teardown(() => {
    if (saved === undefined) delete process.env.SM_ROOT;
    else process.env.SM_ROOT = saved;
  });
  const a = { iqn: 'iqn.2024-01.test:a', address: '10.0.0.1', port: 3260 };
  const b = { iqn: 'iqn.2024-01.test:b', address: '10.0.0.1', port: 3260 };
  const aOther = { ...a, address: '10.0.0.2' };
  await writeAttachRecord('11111111-1111-4111-8111-111111111111', 'LVMoISCSISR', { kind: 'lvm', vg: 'VG_XenStorage-1', devices: ['/dev/sdb'], targets: [a, b] }, 'master');
  await writeAttachRecord('22222222-2222-4222-8222-222222222222', 'LVMoISCSISR', { kind: 'lvm', vg: 'VG_XenStorage-2', devices: ['/dev/sdc'], targets: [a] }, 'master');
  await writeAttachRecord('33333333-3333-4333-8333-333333333333', 'FileSR', { kind: 'file', dir: '/srv/x' }, 'master');
  const records = await listAttachRecords();
  t.is(records.length, 3);
  const others = records.filter((r) => r.sr_uuid !== '11111111-1111-4111-8111-111111111111');
  t.deepEqual(unsharedTargets([a, b], others), [b], 'a stays: the second SR uses it');
  t.deepEqual(unsharedTargets([aOther], others), [aOther], 'the same IQN at another address is another session');
  t.deepEqual(unsharedTargets([a, b], []), [a, b]);
});
