// (a) LVM through lib/os/lvm on loop devices, with the SR's confining --config.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { EXTENT_BYTES, isNotFound, Lvm, MGT_LV, vgNameForSr, vhdLvName } from '../../lib/os/lvm.js';
import { ToolError } from '../../lib/os/run.js';
import { like, rejects } from './support/assert.js';
import { blockdevSize, freeLoop, makeLoop, requireGuest } from './support/guest.js';


requireGuest();
const MiB = 1024 * 1024;

describe('lvm', { timeout: 300_000 }, () => {
  const vg = vgNameForSr(randomUUID());
  let lvName = vhdLvName(randomUUID());
  let loop = '';
  let lvm: Lvm;

  before(async () => {
    loop = await makeLoop('/tmp/lvm-pv.img', 512 * MiB);
    lvm = new Lvm({ devices: [loop] });
  });

  after(async () => {
    if (lvm) await lvm.vgremove(vg).catch(() => {});
    if (loop) await freeLoop(loop, '/tmp/lvm-pv.img');
  });

  it('pvcreate + vgcreate make VG_XenStorage-<sr> with 4 MiB extents', async () => {
    await lvm.pvcreate();
    await lvm.vgcreate(vg);
    const [info] = await lvm.vgs(vg);
    like(info, { name: vg, extentBytes: EXTENT_BYTES, pvCount: 1, lvCount: 0 });
    assert.ok(info!.sizeBytes > 400 * MiB && info!.sizeBytes <= 512 * MiB);
    assert.deepEqual((await lvm.pvs()).map((p) => [p.device, p.vg]), [[loop, vg]]);
  });

  // no udevadm settle in this file: with udev running, LVM waits for udev itself (udev_sync)
  it('lvcreate VHD-<uuid> with tags: active, rounded to the extent, /dev/VG/LV is the LV', async () => {
    assert.equal(await lvm.lvcreate(vg, lvName, 10 * MiB + 1, { tags: ['vdi_type=vhd', 'hidden'] }), 12 * MiB);
    const [lv] = await lvm.lvs(vg, lvName);
    like(lv, { name: lvName, vg, sizeBytes: 12 * MiB, active: true });
    assert.deepEqual(lv?.tags.sort(), ['hidden', 'vdi_type=vhd']);
    const path = Lvm.lvPath(vg, lvName);
    assert.ok(statSync(path).isBlockDevice());
    assert.ok(statSync(Lvm.dmPath(vg, lvName)).isBlockDevice());
    assert.equal(await blockdevSize(path), 12 * MiB);
  });

  it('an inactive LV (MGT) has no device node', async () => {
    await lvm.lvcreate(vg, MGT_LV, 4 * MiB, { active: false });
    like(await lvm.lv(vg, MGT_LV), { active: false, sizeBytes: 4 * MiB });
    assert.ok(!existsSync(Lvm.lvPath(vg, MGT_LV)));
    assert.deepEqual((await lvm.lvs(vg)).map((l) => l.name).sort(), [MGT_LV, lvName].sort());
  });

  it('lvresize inflates and deflates (data at the start kept); the same size is a no-op', async () => {
    const path = Lvm.lvPath(vg, lvName);
    const data = Buffer.alloc(MiB, 0x5a);
    let fh = await open(path, 'r+');
    await fh.write(data, 0, data.length, 0);
    await fh.close();
    assert.equal(await lvm.lvresize(vg, lvName, 100 * MiB + 1), 104 * MiB);
    assert.equal((await lvm.lv(vg, lvName))?.sizeBytes, 104 * MiB);
    assert.equal(await blockdevSize(path), 104 * MiB);
    assert.equal(await lvm.lvresize(vg, lvName, 104 * MiB), 104 * MiB, 'same size');
    assert.equal(await lvm.lvresize(vg, lvName, 5 * MiB), 8 * MiB);
    assert.equal(await blockdevSize(path), 8 * MiB);
    const back = Buffer.alloc(MiB);
    fh = await open(path, 'r');
    await fh.read(back, 0, back.length, 0);
    await fh.close();
    assert.ok(back.equals(data));
  });

  it("lvresize beyond the free space fails with LVM's reason", async () => {
    const e = await rejects(lvm.lvresize(vg, lvName, 4096 * MiB), ToolError);
    assert.match(e.message, /Insufficient free space/);
    assert.equal(e.code, 5);
  });

  it('tags: add and delete in one update, or one at a time', async () => {
    await lvm.lvtags(vg, lvName, { add: ['vhd-parent=abc'], del: ['hidden'] });
    assert.deepEqual((await lvm.lv(vg, lvName))?.tags.sort(), ['vdi_type=vhd', 'vhd-parent=abc']);
    await lvm.addTag(vg, lvName, 'hidden');
    await lvm.delTag(vg, lvName, 'vhd-parent=abc');
    assert.deepEqual((await lvm.lv(vg, lvName))?.tags.sort(), ['hidden', 'vdi_type=vhd']);
  });

  it('lvrename moves the device path', async () => {
    const newName = vhdLvName(randomUUID());
    await lvm.lvrename(vg, lvName, newName);
    assert.ok(!existsSync(Lvm.lvPath(vg, lvName)));
    assert.ok(statSync(Lvm.lvPath(vg, newName)).isBlockDevice());
    assert.equal(await lvm.lv(vg, lvName), undefined);
    lvName = newName;
  });

  it('lvchange -an/-ay removes and restores the device', async () => {
    await lvm.lvchange(vg, lvName, false);
    assert.ok(!existsSync(Lvm.lvPath(vg, lvName)));
    assert.equal((await lvm.lv(vg, lvName))?.active, false);
    await lvm.lvchange(vg, lvName, true);
    assert.ok(existsSync(Lvm.lvPath(vg, lvName)));
    assert.equal((await lvm.lv(vg, lvName))?.active, true);
  });

  it("confinement: a VG on another device is invisible to this SR's Lvm", async () => {
    const other = await makeLoop('/tmp/lvm-other.img', 64 * MiB);
    const otherLvm = new Lvm({ devices: [other] });
    try {
      await otherLvm.pvcreate();
      await otherLvm.vgcreate('VG_other');
      assert.deepEqual((await lvm.vgs()).map((v) => v.name), [vg]);
      assert.deepEqual((await otherLvm.vgs()).map((v) => v.name), ['VG_other']);
      assert.ok(isNotFound(await rejects(lvm.lvs('VG_other'), ToolError)));
    } finally {
      await otherLvm.vgremove('VG_other').catch(() => {});
      await freeLoop(other, '/tmp/lvm-other.img');
    }
  });

  it('without udev sync (udev: false) LVM makes /dev/VG/LV itself', async () => {
    const noUdev = new Lvm({ devices: [loop], udev: false });
    await noUdev.lvcreate(vg, 'LV-noudev', 4 * MiB);
    assert.ok(statSync(Lvm.lvPath(vg, 'LV-noudev')).isBlockDevice());
    await noUdev.lvchange(vg, 'LV-noudev', false);
    assert.ok(!existsSync(Lvm.lvPath(vg, 'LV-noudev')));
    await noUdev.lvremove(vg, 'LV-noudev');
    assert.equal(await noUdev.lv(vg, 'LV-noudev'), undefined);
  });

  it('lvremove, then vgremove; a missing VG is "not found"', async () => {
    await lvm.lvremove(vg, lvName);
    assert.equal(await lvm.lv(vg, lvName), undefined);
    await lvm.vgremove(vg);
    assert.ok(isNotFound(await rejects(lvm.vgs(vg), ToolError)));
  });
});
