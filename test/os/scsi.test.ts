import test from 'ava';
import { byIdPath, checkScsiId, parseVpdSerial, readScsiId, SCSI_ID } from '../../lib/os/scsi.js';
import { InvalidArgumentError } from '../../lib/os/validate.js';
import { fixture, fixtureBytes, recorder } from './helpers.js';

test('scsi_id argv and output', async (t) => {
  const rec = recorder(() => ({ stdout: fixture('scsi_id.txt') }));
  t.is(await readScsiId('/dev/sda', { run: rec.run }), '360000000000000000e00000000010001');
  t.deepEqual(rec.argv(), [[SCSI_ID, '-g', '-u', '-d', '/dev/sda']]);
  await t.throwsAsync(readScsiId('-d', { run: rec.run }), { instanceOf: InvalidArgumentError });
});

test('by-id path of a SCSIid; SCSIids are checked', (t) => {
  t.is(byIdPath('360000000000000000e00000000010001'), '/dev/disk/by-id/scsi-360000000000000000e00000000010001');
  t.throws(() => checkScsiId('../../etc'), { instanceOf: InvalidArgumentError });
  t.throws(() => checkScsiId('-x'), { instanceOf: InvalidArgumentError });
});

test('VPD page 0x80 serial (real page from tgt)', (t) => {
  t.is(parseVpdSerial(fixtureBytes('vpd_pg80.bin')), 'beaf11');
  t.is(parseVpdSerial(Buffer.from([0, 0x83, 0, 0])), '');
  t.is(parseVpdSerial(Buffer.alloc(2)), '');
});
