// (b) iSCSI through lib/os/iscsi + lib/os/scsi against tgtd in the guest:
// discovery, login (plain, CHAP, mutual CHAP), LUN and SCSIid lookup, logout.
import assert from 'node:assert/strict';
import { existsSync, realpathSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import * as iscsi from '../../lib/os/iscsi.js';
import { Lvm } from '../../lib/os/lvm.js';
import { UnreachableError } from '../../lib/os/net.js';
import { runTool } from '../../lib/os/run.js';
import { byIdPath, deviceForScsiId, readScsiId, scsiDiskInfo, scsiIdFromLinks } from '../../lib/os/scsi.js';
import { udevSettle, waitFor } from '../../lib/os/udev.js';
import { like, rejects } from './support/assert.js';
import { OUT, requireGuest, sparseFile, startDaemon, until } from './support/guest.js';
import type { Daemon } from './support/guest.js';
import { Tgt } from './support/tgt.js';


requireGuest();
const MiB = 1024 * 1024;
const ADDR = '127.0.0.1';
const PORT = 3260;
const PLAIN = 'iqn.2024-01.test.smvm:plain';
const CHAP = 'iqn.2024-01.test.smvm:chap';
const MUTUAL = 'iqn.2024-01.test.smvm:mutual';
const SECRET = 'Chap-Secret-123';
const WRONG = 'Wrong-Secret-456';
const TARGET_SECRET = 'Target-Secret-789';

/** The disks of the session logged in to `iqn`, once the kernel has attached `count` of them. */
async function disks(iqn: string, count: number): Promise<iscsi.SessionLun[]> {
  const s = await iscsi.findSession(iqn, ADDR, PORT);
  assert.ok(s, `a session for ${iqn}`);
  const luns = await waitFor(async () => {
    const l = (await iscsi.sessionLuns(s.sid)).filter((x) => x.device);
    return l.length >= count ? l : undefined;
  }, 30_000);
  assert.ok(luns, `${count} disk(s) attached for ${iqn}`);
  return luns;
}

describe('iscsi', { timeout: 300_000 }, () => {
  let tgt: Tgt | undefined;
  let iscsid: Daemon | undefined;

  before(async () => {
    tgt = await Tgt.start(ADDR, PORT, `${OUT}/tgtd.log`);
    await tgt.addTarget(1, PLAIN, [await sparseFile('/tmp/lun-plain-1.img', 128 * MiB), await sparseFile('/tmp/lun-plain-2.img', 64 * MiB)]);
    await tgt.addTarget(2, CHAP, [await sparseFile('/tmp/lun-chap.img', 64 * MiB)]);
    await tgt.requireChap(2, 'alice', SECRET);
    await tgt.addTarget(3, MUTUAL, [await sparseFile('/tmp/lun-mutual.img', 64 * MiB)]);
    await tgt.requireChap(3, 'bob', SECRET, { user: 'target3', password: TARGET_SECRET });
    iscsid = startDaemon('iscsid', ['-f'], `${OUT}/iscsid.log`);
    await until('iscsid', async () => (await readFile('/proc/net/unix', 'utf8')).includes('ISCSIADM_ABSTRACT_NAMESPACE'));
  });

  after(async () => {
    for (const iqn of [PLAIN, CHAP, MUTUAL]) await iscsi.logout(iqn, ADDR, PORT).catch(() => {});
    await iscsid?.kill();
    await tgt?.stop();
  });

  it('discovery lists the targets as {address, port, tpgt, iqn}', async () => {
    const found = await iscsi.discover(ADDR, PORT);
    assert.deepEqual(
      found.sort((a, b) => a.iqn.localeCompare(b.iqn)),
      [CHAP, MUTUAL, PLAIN].map((iqn) => ({ address: ADDR, port: PORT, tpgt: 1, iqn })),
    );
  });

  it('discovery on a dead portal fails fast with UnreachableError', async () => {
    const start = Date.now();
    const e = await rejects(iscsi.discover(ADDR, 3261), UnreachableError);
    assert.equal(e.message, '127.0.0.1 is not reachable on TCP port 3261: connection refused');
    assert.ok(Date.now() - start < 5000);
  });

  it('login without CHAP: session, LUN disks, by-path and by-id links, SCSIid, disk info', async () => {
    await iscsi.login(PLAIN, ADDR, PORT);
    await iscsi.login(PLAIN, ADDR, PORT); // already logged in: fine
    const s = await iscsi.findSession(PLAIN, ADDR, PORT);
    assert.equal(await iscsi.sessionTargetName(s!.sid), PLAIN);
    const luns = await disks(PLAIN, 2);
    assert.deepEqual(luns.map((l) => l.lun), [1, 2]);
    await udevSettle();
    const dev = luns[0]!.device!;
    assert.ok(statSync(dev).isBlockDevice());
    assert.equal(realpathSync(iscsi.byPathLink(ADDR, PORT, PLAIN, 1)), dev);

    const id = await readScsiId(dev);
    assert.match(id, /^36[0-9a-f]{31}$/);
    assert.equal(await scsiIdFromLinks(dev), id);
    assert.equal(await deviceForScsiId(id), byIdPath(id));
    assert.equal(realpathSync(byIdPath(id)), dev);
    assert.notEqual(await readScsiId(luns[1]!.device!), id, 'each LUN has its own SCSIid');
    like(await scsiDiskInfo(byIdPath(id)), { device: dev, lun: 1, vendor: 'IET', model: 'VIRTUAL-DISK', serial: 'beaf11', sizeBytes: 128 * MiB });
  });

  it('LVM on the LUN through its by-id path (the LVMoISCSI layout)', async () => {
    const dev = (await disks(PLAIN, 2))[1]!.device!;
    // the filter names only the by-id link: LVM accepts the disk through that alias
    const lvm = new Lvm({ devices: [byIdPath(await readScsiId(dev))] });
    await lvm.pvcreate();
    await lvm.vgcreate('VG_XenStorage-iscsi');
    await lvm.lvcreate('VG_XenStorage-iscsi', 'VHD-on-lun', 8 * MiB);
    like((await lvm.vgs())[0], { name: 'VG_XenStorage-iscsi', pvCount: 1, lvCount: 1 });
    assert.ok(existsSync('/dev/VG_XenStorage-iscsi/VHD-on-lun'));
    await lvm.vgchange('VG_XenStorage-iscsi', false);
    assert.ok(!existsSync('/dev/VG_XenStorage-iscsi/VHD-on-lun'));
  });

  it('logout removes the session and the disks; logging out again is fine', async () => {
    const devs = (await disks(PLAIN, 2)).map((l) => l.device!);
    await iscsi.logout(PLAIN, ADDR, PORT);
    await udevSettle();
    assert.equal(await iscsi.findSession(PLAIN, ADDR, PORT), undefined);
    for (const d of devs) assert.ok(!existsSync(d), `${d} gone`);
    await iscsi.logout(PLAIN, ADDR, PORT);
    await iscsi.deleteNode(PLAIN, ADDR, PORT);
  });

  it('CHAP: no credentials or a wrong password fail with an authorization error that never shows the secret', async () => {
    assert.equal((await rejects(iscsi.login(CHAP, ADDR, PORT), iscsi.IscsiError)).exitCode, 24);
    const e = await rejects(iscsi.login(CHAP, ADDR, PORT, { username: 'alice', password: WRONG }), iscsi.IscsiError);
    assert.equal(e.exitCode, 24);
    assert.equal(
      e.message,
      `iSCSI login to ${CHAP} at 127.0.0.1:3260 failed: authorization failure (CHAP user or password wrong, or CHAP required) (iscsiadm exit 24)`,
    );
    const everything = [e.message, e.stack, e.cause?.message, e.cause?.stderr, e.cause?.args.join(' '), JSON.stringify(e)].join(' ');
    assert.ok(!everything.includes(WRONG), 'the wrong password appears nowhere');
    assert.equal(await iscsi.findSession(CHAP, ADDR, PORT), undefined);
  });

  it('CHAP: the right password logs in; deleteNode leaves no secret under /etc/iscsi', async () => {
    await iscsi.login(CHAP, ADDR, PORT, { username: 'alice', password: SECRET });
    await disks(CHAP, 1);
    await iscsi.logout(CHAP, ADDR, PORT);
    await iscsi.deleteNode(CHAP, ADDR, PORT);
    const grep = await runTool('grep', ['-r', '-l', '-F', SECRET, '/etc/iscsi'], { allowCodes: [1, 2] });
    assert.equal(grep.stdout, '', 'no file under /etc/iscsi holds the secret');
  });

  it('mutual CHAP: the target must prove itself too', async () => {
    const creds = { username: 'bob', password: SECRET, usernameIn: 'target3' };
    await rejects(iscsi.login(MUTUAL, ADDR, PORT, { ...creds, passwordIn: WRONG }), iscsi.IscsiError);
    assert.equal(await iscsi.findSession(MUTUAL, ADDR, PORT), undefined);
    await iscsi.login(MUTUAL, ADDR, PORT, { ...creds, passwordIn: TARGET_SECRET });
    assert.ok(await iscsi.findSession(MUTUAL, ADDR, PORT));
    await iscsi.logout(MUTUAL, ADDR, PORT);
    await iscsi.deleteNode(MUTUAL, ADDR, PORT);
  });
});
