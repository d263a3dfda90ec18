// (d) lib/vhd's positional I/O on an LV block device (what the LVM SR will use).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Lvm } from '../../lib/os/lvm.js';
import { runTool } from '../../lib/os/run.js';
import { FileIO } from '../../lib/vhd/io.js';
import { blockdevSize, freeLoop, makeLoop, requireGuest } from './support/guest.js';


requireGuest();
const MiB = 1024 * 1024;
const VG = 'VG_XenStorage-vhdio';
const LV = 'VHD-io';

describe('vhd-on-lv', { timeout: 300_000 }, () => {
  let loop = '';
  let lvm: Lvm;

  before(async () => {
    loop = await makeLoop('/tmp/vhdio-pv.img', 256 * MiB);
    lvm = new Lvm({ devices: [loop] });
    await lvm.pvcreate();
    await lvm.vgcreate(VG);
    await lvm.lvcreate(VG, LV, 64 * MiB);
  });

  after(async () => {
    if (lvm) await lvm.vgremove(VG).catch(() => {});
    if (loop) await freeLoop(loop, '/tmp/vhdio-pv.img');
  });

  it('FileIO on /dev/VG/LV: size() is the LV size; positional writes and reads round-trip', async () => {
    const path = Lvm.lvPath(VG, LV);
    const io = await FileIO.open(path, true);
    const a = randomBytes(4096);
    const b = randomBytes(512);
    const tail = randomBytes(512);
    try {
      assert.equal(await io.size(), 64 * MiB);
      await io.write([a, b], MiB + 512); // two buffers back to back, unaligned start
      await io.write(tail, 64 * MiB - 512); // the last sector (where a VHD footer goes)
      await io.sync();
      const back = Buffer.alloc(4096 + 512);
      await io.read(back, MiB + 512);
      assert.ok(back.equals(Buffer.concat([a, b])));
      await assert.rejects(io.read(Buffer.alloc(1024), 64 * MiB - 512), 'reading past the end fails');
    } finally {
      await io.close();
    }
    // the bytes are on the device: read them with plain fs through the dm node
    const fh = await open(Lvm.dmPath(VG, LV), 'r');
    const raw = Buffer.alloc(512);
    await fh.read(raw, 0, 512, 64 * MiB - 512);
    await fh.close();
    assert.ok(raw.equals(tail));
  });

  it('FileIO.size() follows lvresize; truncate() leaves a device alone', async () => {
    const path = Lvm.lvPath(VG, LV);
    await lvm.lvresize(VG, LV, 100 * MiB);
    const io = await FileIO.open(path, true);
    try {
      assert.equal(await io.size(), 100 * MiB);
      await io.truncate(MiB);
      assert.equal(await io.size(), 100 * MiB);
      assert.equal(await blockdevSize(path), 100 * MiB);
    } finally {
      await io.close();
    }
  });

  // dev_t of a minor >= 256 keeps minor bits 8-19 at bits 20-31: deviceSize() must
  // decode that (an earlier version used rdev / 256 and failed here).
  it('FileIO.size() on a block device with minor >= 256 (loop300)', async () => {
    const dev = '/dev/loop300';
    await runTool('mknod', [dev, 'b', '7', '300']).catch(() => {}); // may exist already
    await runTool('truncate', ['-s', `${8 * MiB}`, '/tmp/loop300.img']);
    await runTool('losetup', [dev, '/tmp/loop300.img']);
    try {
      const io = await FileIO.open(dev, false);
      try {
        assert.equal(await io.size(), 8 * MiB);
      } finally {
        await io.close();
      }
    } finally {
      await freeLoop(dev, '/tmp/loop300.img');
    }
  });
});
