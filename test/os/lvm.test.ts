import test from 'ava';
import {
  EXTENT_BYTES,
  isNotFound,
  Lvm,
  lvmConfig,
  MGT_LV,
  parseLvsJson,
  parsePvsJson,
  parseVgsJson,
  rawLvName,
  roundUpToExtent,
  vgNameForSr,
  vhdLvName,
} from '../../lib/os/lvm.js';
import { ToolError } from '../../lib/os/run.js';
import { InvalidArgumentError } from '../../lib/os/validate.js';
import { fixture, recorder } from './helpers.js';

const MiB = 1024 * 1024;
const DEV = '/dev/disk/by-id/scsi-360000000000000000e00000000010001';
const CONFIG =
  'devices { filter = [ "a|^/dev/disk/by-id/scsi-360000000000000000e00000000010001$|", "r|.*|" ]' +
  ' global_filter = [ "a|^/dev/disk/by-id/scsi-360000000000000000e00000000010001$|", "r|.*|" ]' +
  ' use_devicesfile = 0 obtain_device_list_from_udev = 0 hints = "none" scan_lvs = 0 }' +
  ' global { use_lvmetad = 0 } activation { udev_sync = 1 udev_rules = 1 } backup { backup = 0 archive = 0 }';

test('names of the SR layout', (t) => {
  t.is(vgNameForSr('7f1c'), 'VG_XenStorage-7f1c');
  t.is(vhdLvName('ab'), 'VHD-ab');
  t.is(rawLvName('ab'), 'LV-ab');
  t.is(MGT_LV, 'MGT');
  t.is(Lvm.lvPath('VG_XenStorage-7f1c', 'VHD-ab'), '/dev/VG_XenStorage-7f1c/VHD-ab');
  t.is(Lvm.dmPath('VG_XenStorage-7f1c', 'VHD-ab'), '/dev/mapper/VG_XenStorage--7f1c-VHD--ab');
});

test('the --config confines LVM to the SR devices', (t) => {
  t.is(lvmConfig([DEV], true), CONFIG);
  t.regex(lvmConfig(['/dev/sdb', '/dev/mapper/x.y+z'], false), /filter = \[ "a\|\^\/dev\/sdb\$\|", "a\|\^\/dev\/mapper\/x\[\.\]y\[\+\]z\$\|", "r\|\.\*\|" \]/);
  t.regex(lvmConfig(['/dev/sdb'], false), /activation \{ udev_sync = 0 udev_rules = 0 \}/);
  t.throws(() => lvmConfig([], true), { instanceOf: InvalidArgumentError });
  t.throws(() => lvmConfig(['/dev/sdb" ] global { x'], true), { instanceOf: InvalidArgumentError });
  t.throws(() => new Lvm({ devices: ['-oProxyCommand'] }), { instanceOf: InvalidArgumentError });
});

test('argv of every call', async (t) => {
  const rec = recorder((c) => (c.cmd === 'lvs' || c.cmd === 'vgs' || c.cmd === 'pvs' ? { stdout: '{"report":[{}]}' } : undefined));
  const lvm = new Lvm({ devices: [DEV], udev: true, run: rec.run });
  const vg = 'VG_XenStorage-7f1c';
  await lvm.pvcreate();
  await lvm.vgcreate(vg);
  t.is(await lvm.lvcreate(vg, 'VHD-a', 10 * MiB + 1, { tags: ['hidden', 'vdi_type=vhd'] }), 12 * MiB);
  await lvm.lvcreate(vg, MGT_LV, 1, { active: false });
  await lvm.lvs(vg);
  await lvm.lvs(vg, 'VHD-a');
  await lvm.vgs();
  await lvm.vgs(vg);
  await lvm.pvs();
  t.is(await lvm.lvresize(vg, 'VHD-a', 100 * MiB), 100 * MiB);
  await lvm.lvrename(vg, 'VHD-a', 'VHD-b');
  await lvm.lvchange(vg, 'VHD-b', false);
  await lvm.lvchange(vg, 'VHD-b', true);
  await lvm.lvtags(vg, 'VHD-b', { add: ['x=1'], del: ['hidden'] });
  await lvm.addTag(vg, 'VHD-b', 'hidden');
  await lvm.delTag(vg, 'VHD-b', 'x=1');
  await lvm.lvremove(vg, 'VHD-b');
  await lvm.vgchange(vg, false);
  await lvm.vgremove(vg);
  const C = ['--config', CONFIG];
  const R = ['--reportformat', 'json', '--units', 'b', '--nosuffix'];
  t.deepEqual(rec.argv(), [
    ['pvcreate', ...C, '-ff', '-y', '--metadatasize', '10m', DEV],
    ['vgcreate', ...C, '-s', '4m', vg, DEV],
    ['lvcreate', ...C, '-y', '-n', 'VHD-a', '-L', '12582912b', '--addtag', 'hidden', '--addtag', 'vdi_type=vhd', vg],
    ['lvcreate', ...C, '-y', '-n', 'MGT', '-L', '4194304b', '-an', '-Zn', vg],
    ['lvs', ...C, ...R, '-o', 'lv_name,vg_name,lv_size,lv_tags,lv_attr', vg],
    ['lvs', ...C, ...R, '-o', 'lv_name,vg_name,lv_size,lv_tags,lv_attr', `${vg}/VHD-a`],
    ['vgs', ...C, ...R, '-o', 'vg_name,vg_size,vg_free,vg_extent_size,vg_tags,pv_count,lv_count'],
    ['vgs', ...C, ...R, '-o', 'vg_name,vg_size,vg_free,vg_extent_size,vg_tags,pv_count,lv_count', vg],
    ['pvs', ...C, ...R, '-o', 'pv_name,vg_name,pv_size,pv_free'],
    ['lvresize', ...C, '-f', '-L', '104857600b', `${vg}/VHD-a`],
    ['lvrename', ...C, vg, 'VHD-a', 'VHD-b'],
    ['lvchange', ...C, '-an', `${vg}/VHD-b`],
    ['lvchange', ...C, '-ay', `${vg}/VHD-b`],
    ['lvchange', ...C, '--addtag', 'x=1', '--deltag', 'hidden', `${vg}/VHD-b`],
    ['lvchange', ...C, '--addtag', 'hidden', `${vg}/VHD-b`],
    ['lvchange', ...C, '--deltag', 'x=1', `${vg}/VHD-b`],
    ['lvremove', ...C, '-f', `${vg}/VHD-b`],
    ['vgchange', ...C, '-an', vg],
    ['vgremove', ...C, '-f', vg],
  ]);
  t.deepEqual(rec.calls[0]?.opts?.env, { LVM_SUPPRESS_FD_WARNINGS: '1' });
});

test('bad names, tags and sizes are refused before LVM runs', async (t) => {
  const rec = recorder();
  const lvm = new Lvm({ devices: ['/dev/sdb'], run: rec.run });
  await t.throwsAsync(lvm.lvcreate('VG', '--help', MiB), { instanceOf: InvalidArgumentError });
  await t.throwsAsync(lvm.lvcreate('VG', 'LV', 0), { instanceOf: InvalidArgumentError });
  await t.throwsAsync(lvm.lvcreate('VG', 'LV', 1.5), { instanceOf: InvalidArgumentError });
  await t.throwsAsync(lvm.lvcreate('VG', 'LV', MiB, { tags: ['a b'] }), { instanceOf: InvalidArgumentError });
  await t.throwsAsync(lvm.lvrename('VG', 'LV', '../x'), { instanceOf: InvalidArgumentError });
  await t.throwsAsync(lvm.vgcreate('VG', ['/etc/passwd']), { instanceOf: InvalidArgumentError });
  t.is(rec.calls.length, 0);
});

test('sizes round up to the 4 MiB extent', (t) => {
  t.is(EXTENT_BYTES, 4 * MiB);
  t.is(roundUpToExtent(1), 4 * MiB);
  t.is(roundUpToExtent(4 * MiB), 4 * MiB);
  t.is(roundUpToExtent(4 * MiB + 1), 8 * MiB);
});

test('lvresize to the current size is a no-op (real LVM stderr)', async (t) => {
  const stderr = fixture('lvresize-same.stderr');
  const rec = recorder(() => {
    throw new ToolError('lvresize', [], 5, stderr, '');
  });
  const lvm = new Lvm({ devices: ['/dev/sdb'], run: rec.run });
  t.is(await lvm.lvresize('VG', 'LV', 12 * MiB), 12 * MiB);
});

test('lv() is undefined for a missing LV; isNotFound knows LVM\'s wording', async (t) => {
  const missingVg = fixture('lvs-missing-vg.stderr');
  t.true(isNotFound(new ToolError('lvs', [], 5, missingVg, '')));
  t.false(isNotFound(new ToolError('lvs', [], 5, 'Insufficient free space', '')));
  const rec = recorder(() => {
    throw new ToolError('lvs', [], 5, '  Failed to find logical volume "VG/LV"\n', '');
  });
  t.is(await new Lvm({ devices: ['/dev/sdb'], run: rec.run }).lv('VG', 'LV'), undefined);
});

test('report parsers on real lvs/vgs/pvs output', (t) => {
  t.deepEqual(parseLvsJson(fixture('lvs.json')), [
    { name: 'MGT', vg: 'VG_XenStorage-fixture', sizeBytes: 4 * MiB, tags: [], active: false, attr: '-wi-------' },
    {
      name: 'VHD-4e1ba8f5-0d8b-4c6e-9a57-2f3a1d0e6b11',
      vg: 'VG_XenStorage-fixture',
      sizeBytes: 12 * MiB,
      tags: ['hidden', 'vdi_type=vhd'],
      active: true,
      attr: '-wi-a-----',
    },
  ]);
  const [vg] = parseVgsJson(fixture('vgs.json'));
  t.like(vg, { name: 'VG_XenStorage-fixture', extentBytes: 4 * MiB, tags: [], pvCount: 1, lvCount: 2 });
  t.is(vg!.sizeBytes - vg!.freeBytes, 16 * MiB);
  const [pv] = parsePvsJson(fixture('pvs.json'));
  t.like(pv, { device: '/dev/loop0', vg: 'VG_XenStorage-fixture', sizeBytes: vg!.sizeBytes });
  t.deepEqual(parseLvsJson('{"report":[{"lv":[]}]}'), []);
});
