// (d) The LVMoISCSI SR through its executable, as a toolstack calls it
// (`drivers/LVMoISCSISR '<methodCall>'`), against tgtd in the guest: the probe
// ladder (several target addresses too), the whole SR/VDI lifecycle on LVM, thick
// provisioning (LV sizes after snapshot, GC and resize), LV activation per VDI
// (only activated VDIs' chains are active, a shared base until its last VDI is
// deactivated; scan, snapshot, clone and GC leave inactive VDIs inactive), kills
// at the LVM steps recovered by sr_scan and sm-gc, GC, re-attach with data
// checked against a model, delete; and the failure paths (wrong IQN, wrong SCSIid).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { appendFileSync, existsSync, readdirSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { randomBytes, randomUUID } from 'node:crypto';
import * as iscsi from '../../lib/os/iscsi.js';
import { Lvm, type LvInfo } from '../../lib/os/lvm.js';
import { encodeMethodCall, parseMethodResponse, type MethodResponse } from '../../lib/smapi/index.js';
import { deflatedSizeFor, thickSizeFor } from '../../lib/sr/lvm-sizes.js';
import { BLOCK_SIZE, readImageSummary, VhdImage } from '../../lib/vhd/index.js';
import { openNbd, writeServed } from '../helpers/nbd-vdi.js';
import type { SmEnv } from '../helpers/sm.js';
import { batRoomFor } from '../../lib/sr/sizes.js';
import { OUT, requireGuest, sparseFile, startDaemon, until } from './support/guest.js';
import type { Daemon } from './support/guest.js';
import { fileSystemOverKernelNbd } from './support/kernel-nbd.js';
import { relinkUnderActiveLeaf, seedScenarioLive, type LiveSr } from './support/live-gc.js';
import { Tgt } from './support/tgt.js';

requireGuest();
const pexec = promisify(execFile);
const MiB = 1024 * 1024;
const ADDR = '127.0.0.1';
const PORT = 3260;
const IQN = 'iqn.2024-01.test.smvm:lvmsr';
const CHAP_IQN = 'iqn.2024-01.test.smvm:lvmsr-chap';
const SECRET = 'Lvm-Chap-Secret-321';
const DRIVER = join(process.cwd(), 'drivers', 'LVMoISCSISR');
const SM_VHD = join(process.cwd(), 'dist', 'lib', 'vhd', 'cli', 'sm-vhd.js');
const SM_GC = join(process.cwd(), 'dist', 'gc', 'sm-gc.js');
const SR = randomUUID();
const VG = `VG_XenStorage-${SR}`;

let smRoot = '';
const env = () => ({ ...process.env, SM_ROOT: smRoot, SM_GC: 'off', ORIGINATOR: 'SM' });

function timing(what: string, ms: number): void {
  const line = `LVMOISCSI TIME ${what} ${ms.toFixed(0)}ms`;
  console.log(line);
  appendFileSync(join(OUT, 'lvmoiscsi-timings.txt'), line + '\n');
}

interface Call {
  response: MethodResponse;
  stderr: string;
  ms: number;
}

/** The driver's argv for one call, as a toolstack makes it. */
const driverArgv = (verb: string, extra: Record<string, unknown> = {}, dc: Record<string, string> = {}) => [
  encodeMethodCall(verb, [
    {
      host_ref: 'OpaqueRef:host-1',
      session_ref: 'OpaqueRef:session-1',
      command: verb,
      args: [],
      sr_uuid: SR,
      sr_ref: 'OpaqueRef:sr-1',
      subtask_of: 'DummyRef:|task|' + verb,
      ...extra,
      device_config: { SRmaster: 'true', ...dc },
    },
  ]),
];

async function call(verb: string, extra: Record<string, unknown> = {}, dc: Record<string, string> = {}): Promise<Call> {
  const start = performance.now();
  const r = await pexec(DRIVER, driverArgv(verb, extra, dc), { env: env(), maxBuffer: 64 * MiB }).catch(
    (e: { stdout?: string; stderr?: string; code?: number }) => {
      throw new Error(`${verb}: driver exited ${e.code}: ${e.stderr}`);
    },
  );
  return { response: parseMethodResponse(r.stdout), stderr: r.stderr, ms: performance.now() - start };
}

async function ok(verb: string, extra: Record<string, unknown> = {}, dc: Record<string, string> = {}): Promise<{ value: unknown; ms: number }> {
  const c = await call(verb, extra, dc);
  if (c.response.kind === 'fault') assert.fail(`${verb} failed: ${c.response.faultCode} ${c.response.faultString}`);
  return { value: c.response.value, ms: c.ms };
}

async function fault(verb: string, code: number, extra: Record<string, unknown> = {}, dc: Record<string, string> = {}): Promise<Call> {
  const c = await call(verb, extra, dc);
  assert.equal(c.response.kind, 'fault', `${verb} should fail with ${code}`);
  if (c.response.kind === 'fault') assert.equal(c.response.faultCode, code, c.response.faultString);
  return c;
}

/** Runs argv with SM_FAULT=point and expects the process to kill itself there. */
async function killedAt(point: string, file: string, args: string[]): Promise<void> {
  const r = await pexec(file, args, { env: { ...env(), SM_FAULT: point }, maxBuffer: 64 * MiB }).then(
    () => undefined,
    (e: { signal?: string }) => e.signal,
  );
  assert.equal(r, 'SIGKILL', `${file} ${args[0]?.slice(0, 40)} should die at ${point}`);
}

interface VhdLv {
  size: number;
  hidden: boolean;
  parent: string;
  virtualSize: number;
  /** Bytes the VHD uses (a deflated LV holds these). */
  used: number;
  /** The inflated LV size for the VHD's virtual size and BAT room. */
  thick: number;
}

/** LVM confined to the attached SR's device, as the driver runs it. */
async function srLvm(): Promise<Lvm> {
  const rec = JSON.parse(await readFile(join(smRoot, 'run', 'sm', 'sr', `${SR}.json`), 'utf8')) as { backend: { devices: string[] } };
  return new Lvm({ devices: rec.backend.devices });
}

/** The VDIs whose LV is active, as lvs reports it (lv_attr), sorted. */
async function activeLvs(): Promise<string[]> {
  const lvs = await (await srLvm()).lvs(VG);
  return lvs
    .filter((l) => l.name.startsWith('VHD-') && l.active)
    .map((l) => l.name.slice(4))
    .sort();
}

async function assertActive(want: string[], what: string): Promise<void> {
  assert.deepEqual(await activeLvs(), [...want].sort(), what);
}

/**
 * Runs `fn` with every VHD LV of the SR (from lvs) active at its path. The
 * inactive ones are activated for it and deactivated again, so the state is as it was.
 */
async function withEveryLvActive<T>(fn: (lvs: LvInfo[]) => Promise<T>): Promise<T> {
  const lvm = await srLvm();
  const lvs = (await lvm.lvs(VG)).filter((l) => l.name.startsWith('VHD-'));
  const inactive = lvs.filter((l) => !l.active).map((l) => l.name);
  await lvm.setActive(VG, inactive, true);
  try {
    return await fn(lvs);
  } finally {
    await lvm.setActive(VG, inactive, false);
  }
}

/** Every VHD LV of the SR, as lvs and the VHD inside it tell. */
async function vhdLvs(): Promise<Map<string, VhdLv>> {
  return withEveryLvActive(async (lvs) => {
    const out = new Map<string, VhdLv>();
    for (const lv of lvs) {
      const uuid = lv.name.slice(4);
      const image = await VhdImage.open(lvPath(uuid));
      try {
        const parent = image.footer.diskType === 4 ? image.header.parentUnicodeName : '';
        out.set(uuid, {
          size: lv.sizeBytes,
          hidden: image.footer.hidden === 1,
          parent,
          virtualSize: image.virtualSize,
          used: image.usedBytes,
          thick: thickSizeFor(image.virtualSize, image.header.maxTableEntries * BLOCK_SIZE),
        });
      } finally {
        await image.close();
      }
    }
    return out;
  });
}

/** Thick provisioning: hidden (read-only) images deflated to what they use, every other one fully inflated. */
async function assertProvisioning(what = 'thick provisioning'): Promise<void> {
  for (const [u, lv] of await vhdLvs()) {
    const want = lv.hidden ? deflatedSizeFor(lv.used) : lv.thick;
    assert.equal(lv.size, want, `${what}: LV of ${lv.hidden ? 'hidden' : 'visible'} ${u} (uses ${lv.used} bytes)`);
  }
}
const SIZE = 64 * MiB;

const createArgs = (size: number, label: string) => [String(size), label, '', '', 'false', '', '', 'false'];
const lvPath = (vdi: string) => `/dev/${VG}/VHD-${vdi}`;

/** An active VDI is served (DESIGN item 8): written and read through its NBD socket, never its LV. */
const served = (vdi: string) => existsSync(join(smRoot, 'run', 'blktap-control', 'nbd', SR, vdi));
const nbdCtx = () => ({ root: smRoot, base: smRoot, sr: SR }) as unknown as SmEnv;

async function writeVdi(vdi: string, offset: number, data: Buffer): Promise<void> {
  if (served(vdi)) {
    await writeServed(nbdCtx(), vdi, offset, data);
    return;
  }
  const f = join(smRoot, `data-${randomUUID()}`);
  await writeFile(f, data);
  await pexec('node', [SM_VHD, 'write', '-n', lvPath(vdi), '-i', f, '-o', String(offset)]);
  await rm(f);
}

async function exportVdi(vdi: string): Promise<Buffer> {
  if (served(vdi)) {
    const { virtualSize } = await readImageSummary(lvPath(vdi));
    const c = await openNbd(nbdCtx(), vdi);
    try {
      const parts: Buffer[] = [];
      for (let at = 0; at < virtualSize; at += 4 * MiB) parts.push(await c.read(at, Math.min(4 * MiB, virtualSize - at)));
      return Buffer.concat(parts);
    } finally {
      c.close();
    }
  }
  const f = join(smRoot, `export-${vdi}.raw`);
  await pexec('node', [SM_VHD, 'export', '-n', lvPath(vdi), '-o', f], { maxBuffer: 16 * MiB });
  const b = await readFile(f);
  await rm(f);
  return b;
}

/** What each VDI must read as: a raw image of the virtual size. */
class Model {
  constructor(readonly bytes: Buffer) {}
  static zero(size: number): Model {
    return new Model(Buffer.alloc(size));
  }
  write(offset: number, data: Buffer): void {
    data.copy(this.bytes, offset);
  }
  copy(): Model {
    return new Model(Buffer.from(this.bytes));
  }
}

describe('lvmoiscsi-sr', { timeout: 1_800_000 }, () => {
  let tgt: Tgt | undefined;
  let iscsid: Daemon | undefined;
  let scsiId = '';
  const full = () => ({ target: ADDR, targetIQN: IQN, SCSIid: scsiId });

  before(async () => {
    smRoot = await mkdtemp('/tmp/smroot-lvm-');
    tgt = await Tgt.start(ADDR, PORT, `${OUT}/tgtd-lvmsr.log`);
    await tgt.addTarget(1, IQN, [await sparseFile('/tmp/lun-lvmsr.img', 1024 * MiB)]); // sparse: room for the live GC's thick leaves after the lifecycle's VDIs
    await tgt.addTarget(2, CHAP_IQN, [await sparseFile('/tmp/lun-lvmsr-chap.img', 64 * MiB)]);
    await tgt.requireChap(2, 'carol', SECRET);
    iscsid = startDaemon('iscsid', ['-f'], `${OUT}/iscsid-lvmsr.log`);
    await until('iscsid', async () => (await readFile('/proc/net/unix', 'utf8')).includes('ISCSIADM_ABSTRACT_NAMESPACE'));
  });

  after(async () => {
    await iscsi.logout(IQN, ADDR, PORT).catch(() => {});
    await iscsi.logout(CHAP_IQN, ADDR, PORT).catch(() => {});
    await iscsid?.kill();
    await tgt?.stop();
    await pexec('cp', [join(smRoot, 'var', 'log', 'SMlog'), join(OUT, 'lvmoiscsi-SMlog')]).catch(() => {});
  });

  it('probe without target: ConfigTargetMissing (95)', async () => {
    await fault('sr_probe', 95);
  });

  it('probe without targetIQN: 96 with the target IQNs as XML on stderr', async () => {
    const c = await fault('sr_probe', 96, {}, { target: ADDR });
    assert.match(c.stderr, /<iscsi-target-iqns>/);
    assert.match(c.stderr, new RegExp(`<TGT>\\s*<Index>0</Index>\\s*<IPAddress>${ADDR}</IPAddress>\\s*<TargetIQN>${IQN}</TargetIQN>\\s*</TGT>`));
  });

  it('probe without SCSIid: 107 with the LUNs as XML on stderr, and logged out again', async () => {
    const c = await fault('sr_probe', 107, {}, { target: ADDR, targetIQN: IQN });
    assert.match(c.stderr, /<iscsi-target>\s*<LUN>\s*<vendor>[^<]*<\/vendor>\s*<serial>[^<]*<\/serial>\s*<LUNid>1<\/LUNid>\s*<size>1073741824<\/size>/);
    const m = /<SCSIid>([^<]+)<\/SCSIid>/.exec(c.stderr);
    assert.ok(m, 'a SCSIid in the LUN list');
    scsiId = m[1]!;
    assert.equal(await iscsi.findSession(IQN, ADDR, PORT), undefined, 'probe logs out of what it logged in to');
    // Several addresses: an unreachable one (TEST-NET-1) first, then the target's.
    const multi = await fault('sr_probe', 107, {}, { target: `192.0.2.1,${ADDR}`, targetIQN: IQN });
    assert.match(multi.stderr, new RegExp(`<SCSIid>${scsiId}</SCSIid>`), 'the second address answered');
    timing('sr_probe (first of two addresses unreachable)', multi.ms);
    assert.equal(await iscsi.findSession(IQN, ADDR, PORT), undefined);
  });

  it('probe complete on an empty LUN: empty SRlist', async () => {
    const { value } = await ok('sr_probe', {}, full());
    assert.match(String(value), /<SRlist\/>/);
  });

  it('wrong IQN: ISCSILogin (68); wrong SCSIid: ConfigSCSIid (107); bad values refused before any tool runs', async () => {
    await fault('sr_create', 68, { args: ['0'] }, { ...full(), targetIQN: 'iqn.2024-01.test.smvm:nosuch' });
    await fault('sr_attach', 68, {}, { ...full(), targetIQN: 'iqn.2024-01.test.smvm:nosuch' });
    await fault('sr_create', 107, { args: ['0'] }, { ...full(), SCSIid: '3600000000000000000000000deadbeef' });
    await fault('sr_probe', 107, {}, { ...full(), SCSIid: 'x;rm -rf /' });
    await fault('sr_probe', 95, {}, { ...full(), target: '127.0.0.1;reboot' });
    assert.equal(await iscsi.findSession(IQN, ADDR, PORT), undefined);
  });

  it('CHAP: probe logs in with chapuser/chappassword (107 + LUN list); a wrong password is ISCSILogin (68); the secret is never logged', async () => {
    const c = await fault('sr_probe', 107, {}, { target: ADDR, targetIQN: CHAP_IQN, chapuser: 'carol', chappassword: SECRET });
    assert.match(c.stderr, /<LUNid>1<\/LUNid>\s*<size>67108864<\/size>/);
    const w = await fault('sr_probe', 68, {}, { target: ADDR, targetIQN: CHAP_IQN, chapuser: 'carol', chappassword: 'Wrong-Secret-000' });
    assert.ok(w.response.kind === 'fault' && !w.response.faultString.includes('Wrong-Secret-000'));
    const log = await readFile(join(smRoot, 'var', 'log', 'SMlog'), 'utf8');
    assert.ok(!log.includes(SECRET) && !log.includes('Wrong-Secret-000'), 'no CHAP secret in SMlog');
    assert.equal(await iscsi.findSession(CHAP_IQN, ADDR, PORT), undefined);
  });

  const models = new Map<string, Model>();
  let vdi = '';
  let snap = '';
  let clone = '';
  const attachedVdis = new Set<string>();
  const vdiArgs = (u: string, args: string[] = []) => ({ vdi_uuid: u, vdi_location: u, args });

  /** As a VM start does: vdi_attach (once), then vdi_activate. */
  async function activate(u: string): Promise<void> {
    if (!attachedVdis.has(u)) {
      timing('vdi_attach', (await ok('vdi_attach', vdiArgs(u, ['true']), full())).ms);
      attachedVdis.add(u);
    }
    timing('vdi_activate', (await ok('vdi_activate', vdiArgs(u, ['true']), full())).ms);
  }

  /** As a VM stop does: vdi_deactivate, and vdi_detach with `detach`. */
  async function deactivate(u: string, detach = false): Promise<void> {
    timing('vdi_deactivate', (await ok('vdi_deactivate', vdiArgs(u), full())).ms);
    if (detach) {
      await ok('vdi_detach', vdiArgs(u), full());
      attachedVdis.delete(u);
    }
  }

  /** The hidden images of the SR, from the VHDs themselves. */
  const hiddenLvs = async () => [...(await vhdLvs())].filter(([, lv]) => lv.hidden).map(([u]) => u);

  it('sr_create makes the VG and MGT on the LUN; probe then lists the SR', async () => {
    const { ms } = await ok('sr_create', { args: ['0'], sr_sm_config: { name_label: 'lvm test SR' } }, full());
    timing('sr_create', ms);
    const { value } = await ok('sr_probe', {}, full());
    assert.match(String(value), new RegExp(`<UUID>${SR}</UUID>`));
    await fault('sr_create', 42, { args: ['0'] }, full()); // the LUN holds an SR now
  });

  it('sr_attach, vdi_create (thick LV, left inactive), vdi_activate, writes through its NBD socket', async () => {
    const a = await ok('sr_attach', {}, full());
    timing('sr_attach', a.ms);
    assert.ok(existsSync(`/dev/${VG}/MGT`), 'sr_attach activates the MGT LV');
    const c = await ok('vdi_create', { args: createArgs(SIZE, 'disk') }, full());
    timing('vdi_create', c.ms);
    vdi = (c.value as { uuid: string }).uuid;
    const lv = await (await srLvm()).lv(VG, `VHD-${vdi}`);
    assert.equal(lv?.sizeBytes, thickSizeFor(SIZE, batRoomFor(SIZE)));
    assert.equal(lv?.active, false, `a new VDI is inactive until activated (${lv?.attr})`);
    await activate(vdi);
    await assertActive([vdi], 'vdi_activate activates the VDI');
    const m = Model.zero(SIZE);
    const d1 = randomBytes(3 * MiB);
    const d2 = randomBytes(MiB);
    await writeVdi(vdi, 0, d1);
    m.write(0, d1);
    await writeVdi(vdi, SIZE - MiB, d2); // the last block: a thick LV holds every block
    m.write(SIZE - MiB, d2);
    models.set(vdi, m);
  });

  it('vdi_snapshot of an active VDI, vdi_clone of an inactive one, activation of chains sharing bases, vdi_delete, sr_scan', async () => {
    const s = await ok('vdi_snapshot', vdiArgs(vdi), full());
    timing('vdi_snapshot', s.ms);
    snap = (s.value as { uuid: string }).uuid;
    models.set(snap, models.get(vdi)!.copy());
    const lvs = await vhdLvs();
    const [base] = [...lvs.keys()].filter((u) => u !== vdi && u !== snap);
    const b = lvs.get(base!)!;
    assert.ok(b.hidden && lvs.get(vdi)!.parent.length > 0, 'the old image became the hidden base');
    assert.equal(b.size, deflatedSizeFor(b.used), 'the base is deflated to the extents its VHD uses');
    assert.ok(b.size < lvs.get(vdi)!.size, `base ${b.size} < leaf ${lvs.get(vdi)!.size}`);
    console.log(`LVMOISCSI SIZE base ${b.size} (uses ${b.used}) leaf ${lvs.get(vdi)!.size} snapshot ${lvs.get(snap)!.size}`);
    await assertProvisioning();
    await assertActive([vdi, base!], 'the active VDI keeps its new leaf and base active; the snapshot is inactive');
    const d3 = randomBytes(2 * MiB + 4096);
    await writeVdi(vdi, 5 * MiB + 512, d3);
    models.get(vdi)!.write(5 * MiB + 512, d3);

    await deactivate(vdi);
    await assertActive([], 'deactivated: its leaf and base');
    const c = await ok('vdi_clone', vdiArgs(vdi), full());
    timing('vdi_clone', c.ms);
    clone = (c.value as { uuid: string }).uuid;
    models.set(clone, models.get(vdi)!.copy());
    await assertActive([], 'a clone of an inactive VDI leaves every LV inactive');
    const base2 = (await hiddenLvs()).find((u) => u !== base)!;
    await activate(clone);
    await assertActive([clone, base2, base!], 'vdi_activate of the clone: its leaf and both bases');
    await activate(vdi);
    await assertActive([clone, vdi, base2, base!], 'the VDI shares both bases');
    const d4 = randomBytes(MiB);
    await writeVdi(clone, 20 * MiB, d4);
    models.get(clone)!.write(20 * MiB, d4);
    const d5 = randomBytes(MiB);
    await writeVdi(vdi, 30 * MiB, d5);
    models.get(vdi)!.write(30 * MiB, d5);
    for (const u of [vdi, clone]) assert.ok((await exportVdi(u)).equals(models.get(u)!.bytes), `VDI ${u} reads as its model`);
    await deactivate(vdi);
    await assertActive([clone, base2, base!], 'the clone keeps the shared bases active');
    await deactivate(clone);
    await assertActive([], 'the last VDI deactivated takes the bases with it');

    const del = await ok('vdi_delete', vdiArgs(snap), full());
    timing('vdi_delete', del.ms);
    models.delete(snap);
    const scan = await ok('sr_scan', {}, full());
    timing('sr_scan', scan.ms);
    await assertActive([], 'sr_scan reads every LV and leaves them inactive');
    assert.deepEqual(readdirSync(join(smRoot, 'run', 'sm', 'lvhold', SR)), [], 'no LV hold left');
  });

  it('GC (sm-gc -g) collects and coalesces inactive VDIs and leaves them inactive; data unchanged', async () => {
    const lvm = await srLvm();
    const countVhdLvs = async () => (await lvm.lvs(VG)).filter((l) => l.name.startsWith('VHD-')).length;
    assert.equal(await countVhdLvs(), 4, 'two hidden bases, the VDI and its clone');
    const start = performance.now();
    await pexec('node', [SM_GC, '-u', SR, '-g'], { env: env() });
    timing('sm-gc -g', performance.now() - start);
    assert.equal(await countVhdLvs(), 3, 'the base left with one child was coalesced away');
    await assertActive([], 'the GC leaves every LV inactive');
    await assertProvisioning(); // the base that took the coalesce was inflated for it and deflated again
    for (const u of [vdi, clone]) await activate(u);
    for (const [u, m] of models) assert.ok((await exportVdi(u)).equals(m.bytes), `VDI ${u} reads as its model after GC`);
    for (const u of [vdi, clone]) await deactivate(u);
  });

  it('an LV returning EIO (device-mapper error target) leaves every tree alone for scan and the GC; once it reads again the GC collects, data exact', async () => {
    // A leaf-coalesce candidate: the VDI's only snapshot deleted.
    const s = await ok('vdi_snapshot', vdiArgs(vdi), full());
    await ok('vdi_delete', vdiArgs((s.value as { uuid: string }).uuid), full());
    const lvm = await srLvm();
    const countVhdLvs = async () => (await lvm.lvs(VG)).filter((l) => l.name.startsWith('VHD-')).length;
    const before = await countVhdLvs();
    // The clone's leaf, kept active by its activation, turned into an error target: every read is EIO.
    await activate(clone);
    const dm = `${VG.replace(/-/g, '--')}-VHD--${clone.replace(/-/g, '--')}`;
    const table = (await pexec('dmsetup', ['table', dm])).stdout.trim();
    const sectors = table.split(' ')[1]!;
    const load = async (t: string) => {
      await pexec('dmsetup', ['suspend', dm]);
      await pexec('dmsetup', ['load', dm, '--table', t]);
      await pexec('dmsetup', ['resume', dm]);
      // A new table leaves the device's page cache as it was: what was read before (footer, header) would still read.
      await pexec('blockdev', ['--flushbufs', lvPath(clone)]);
    };
    await load(`0 ${sectors} error`);
    // Failed or not, the SR is left as the next test expects it: nothing active.
    const cleanup = () => deactivate(clone).catch(() => undefined);
    try {
      await assert.rejects(readFile(lvPath(clone)).then(() => undefined), /EIO|I\/O error/, 'the LV returns EIO');
      await ok('sr_scan', {}, full());
      await pexec('node', [SM_GC, '-u', SR, '-g'], { env: env() });
      const log = await readFile(join(smRoot, 'var', 'log', 'SMlog'), 'utf8');
      assert.match(log, new RegExp(`image ${clone} is unreadable .* every tree is left alone`), 'the GC says why it does nothing');
      assert.equal(await countVhdLvs(), before, 'nothing was coalesced or deleted while an image could not be read');
    } catch (e) {
      await load(table);
      await cleanup();
      throw e;
    }
    await load(table);
    try {
      await pexec('node', [SM_GC, '-u', SR, '-g'], { env: env() });
      assert.equal(await countVhdLvs(), before - 1, 'once it reads again, the leaf-coalesce is done');
      await activate(vdi);
      for (const [u, m] of models) assert.ok((await exportVdi(u)).equals(m.bytes), `VDI ${u} reads as its model`);
      await deactivate(vdi);
    } finally {
      await cleanup();
    }
  });

  it('killed at lvm-deflating (snapshot of an active VDI), lvm-inflated and mgt-written (GC): sr_scan and sm-gc recover; one thick LV, data identical, the killed holds dropped', async () => {
    const size = 32 * MiB;
    const c = await ok('vdi_create', { args: createArgs(size, 'crash') }, full());
    const w = (c.value as { uuid: string }).uuid;
    await activate(w);
    const m = Model.zero(size);
    const d = randomBytes(5 * MiB);
    await writeVdi(w, 3 * MiB, d);
    m.write(3 * MiB, d);
    const before = new Set((await vhdLvs()).keys());

    // Snapshot committed, the base's footer moved for the smaller size, the LV not yet shrunk.
    await killedAt('lvm-deflating', DRIVER, driverArgv('vdi_snapshot', vdiArgs(w), full()));
    let start = performance.now();
    await ok('sr_scan', {}, full());
    timing('sr_scan (recovering a snapshot killed while deflating)', performance.now() - start);
    await assertProvisioning();
    const added = [...(await vhdLvs())].filter(([u]) => !before.has(u));
    assert.equal(added.length, 2, 'the snapshot committed: a base and the snapshot');
    const snapOfW = added.find(([, lv]) => !lv.hidden)?.[0];
    const baseOfW = added.find(([, lv]) => lv.hidden)?.[0];
    assert.ok(snapOfW && baseOfW, 'one hidden base, one visible snapshot');
    await assertActive([w, baseOfW], 'the killed snapshot`s hold is dropped: only the active VDI`s leaf and base stay active');
    await activate(snapOfW);
    assert.ok((await exportVdi(w)).equals(m.bytes) && (await exportVdi(snapOfW)).equals(m.bytes), 'VDI and snapshot read as the model');
    await deactivate(snapOfW, true);
    const d2 = randomBytes(MiB);
    await writeVdi(w, 20 * MiB, d2);
    m.write(20 * MiB, d2);
    await deactivate(w);
    await ok('vdi_delete', vdiArgs(snapOfW), full());

    // Leaf-coalesce of w into its base: the base LV grown, its footer not yet at the new end.
    await killedAt('lvm-inflated', 'node', [SM_GC, '-u', SR, '-g']);
    start = performance.now();
    await ok('sr_scan', {}, full()); // the SR's own recovery makes the parent readable again
    timing('sr_scan (repairing a parent killed while inflating)', performance.now() - start);
    await assertActive([], 'the killed GC`s hold is dropped by the next verb');
    await activate(w);
    assert.ok((await exportVdi(w)).equals(m.bytes), 'VDI reads as its model after the kill');
    await deactivate(w);
    // The GC's recovery redoes the leaf-coalesce; killed again once the metadata is written.
    await killedAt('mgt-written', 'node', [SM_GC, '-u', SR, '-g']);
    start = performance.now();
    await pexec('node', [SM_GC, '-u', SR, '-g'], { env: env() });
    timing('sm-gc -g (recovering)', performance.now() - start);
    await assertActive([], 'the next GC drops the killed one`s hold and leaves nothing active');
    const after = await vhdLvs();
    const chain = [...after.keys()].filter((u) => !before.has(u) || u === w);
    assert.deepEqual(chain, [w], 'the VDI is one image: its base was merged into it');
    assert.equal(after.get(w)!.parent, '', 'no parent left');
    await assertProvisioning();
    await activate(w);
    assert.ok((await exportVdi(w)).equals(m.bytes), 'VDI reads as its model after recovery');
    await deactivate(w, true);
    await ok('vdi_delete', vdiArgs(w), full());
  });

  it('vdi_resize of an active VDI grows the LV and the VHD; killed with the LV grown (lvm-inflated), sr_scan finishes it; vdi_resize_online; data reads back', async () => {
    const c = await ok('vdi_create', { args: createArgs(16 * MiB, 'grow') }, full());
    const g = (c.value as { uuid: string }).uuid;
    await activate(g);
    let m = Model.zero(16 * MiB);
    const d = randomBytes(MiB);
    await writeVdi(g, 15 * MiB, d);
    m.write(15 * MiB, d);
    const grown = (size: number) => {
      const n = Model.zero(size);
      m.bytes.copy(n.bytes);
      return n;
    };

    const r = await ok('vdi_resize', vdiArgs(g, [String(40 * MiB)]), full());
    timing('vdi_resize', r.ms);
    m = grown(40 * MiB);
    let lv = (await vhdLvs()).get(g)!;
    assert.equal(lv.virtualSize, 40 * MiB);
    assert.equal(lv.size, lv.thick, 'the LV holds every block of the new size');
    console.log(`LVMOISCSI SIZE resized 16->40 MiB: LV ${lv.size}`);
    const tail = randomBytes(MiB);
    await writeVdi(g, 39 * MiB, tail); // the last block of the new size fits without any further grow
    m.write(39 * MiB, tail);

    await killedAt('lvm-inflated', DRIVER, driverArgv('vdi_resize', vdiArgs(g, [String(72 * MiB)]), full()));
    await ok('sr_scan', {}, full());
    await assertActive([g], 'the active VDI stays active through the kill and the recovery');
    m = grown(72 * MiB);
    lv = (await vhdLvs()).get(g)!;
    assert.equal(lv.virtualSize, 72 * MiB, 'recovery rolled the resize forward');
    assert.equal(lv.size, lv.thick);

    const o = await ok('vdi_resize_online', vdiArgs(g, [String(80 * MiB)]), full());
    timing('vdi_resize_online', o.ms);
    m = grown(80 * MiB);
    await writeVdi(g, 79 * MiB, tail);
    m.write(79 * MiB, tail);
    lv = (await vhdLvs()).get(g)!;
    assert.equal(lv.size, lv.thick);
    assert.ok((await exportVdi(g)).equals(m.bytes), 'the resized VDI reads as its model');
    await deactivate(g, true);
    await assertActive([], 'deactivated');
    await ok('vdi_delete', vdiArgs(g), full());
  });

  it('sr_detach refuses while a VDI is active (SRInUse), then deactivates and logs out; sr_attach again leaves VHD LVs inactive; every VDI reads as its model', async () => {
    await activate(vdi);
    await fault('sr_detach', 16, {}, full());
    await assertActive([vdi, ...(await hiddenLvs())], 'a refused detach changes nothing');
    await deactivate(vdi);
    const d = await ok('sr_detach', {}, full());
    timing('sr_detach', d.ms);
    attachedVdis.clear(); // the host's attach state goes with the SR
    assert.equal(existsSync(lvPath(vdi)), false, 'LVs inactive after detach');
    assert.equal(await iscsi.findSession(IQN, ADDR, PORT), undefined, 'logged out after detach');
    await ok('sr_attach', {}, full());
    await assertActive([], 'after sr_attach no VHD LV is active');
    const scan = await ok('sr_scan', {}, full());
    timing('sr_scan (after re-attach)', scan.ms);
    await assertActive([], 'nor after sr_scan');
    for (const u of models.keys()) await activate(u);
    for (const [u, m] of models) assert.ok((await exportVdi(u)).equals(m.bytes), `VDI ${u} reads as its model after re-attach`);
    for (const u of models.keys()) await deactivate(u, true);
    await assertActive([], 'all deactivated');
  });

  it('ext4 on the /dev/nbdN of vdi_attach, through detach/attach and a snapshot while mounted; then deleted and collected', async () => {
    const lvm = await srLvm();
    const before = (await lvm.lvs(VG)).filter((l) => l.name.startsWith('VHD-')).length;
    const { vdi: v, snapshot } = await fileSystemOverKernelNbd({ sr: SR, smRoot, ok: async (verb, extra) => (await ok(verb, extra, full())).value });
    await assertActive([], 'every LV inactive again');
    for (const u of [snapshot, v]) await ok('vdi_delete', vdiArgs(u), full());
    await pexec('node', [SM_GC, '-u', SR, '-g'], { env: env() });
    assert.equal((await lvm.lvs(VG)).filter((l) => l.name.startsWith('VHD-')).length, before, 'its base collected by the GC');
  });

  /** This SR as the live GC scenarios reach it (support/live-gc.ts). */
  const liveSr = (): LiveSr => ({
    sr: SR,
    smRoot,
    ok: async (verb, extra) => (await ok(verb, extra, full())).value,
    gc: async () => {
      const start = performance.now();
      await pexec('node', [SM_GC, '-u', SR, '-g'], { env: env(), maxBuffer: 64 * MiB });
      timing('sm-gc -g (live)', performance.now() - start);
    },
    withImages: (fn) => withEveryLvActive((lvs) => fn(new Map(lvs.map((lv) => [lv.name.slice(4), lvPath(lv.name.slice(4))])))),
    // The parent that took the copy was inflated for it; it ends deflated (still a base copy) or as the inflated leaf.
    assertSpace: (what) => assertProvisioning(what),
  });

  it('live GC, the seed scenario: an active VDI written through NBD, its only snapshot deleted, sm-gc -g: one thick LV, never deactivated, exact bytes', async () => {
    await seedScenarioLive(liveSr());
  });

  it('live GC, a hidden node under an active leaf: coalesced (base LV inflated, then deflated) and relinked under the running datapath; then leaf-coalesced live', async () => {
    await relinkUnderActiveLeaf(liveSr());
  });

  it('a VDI, a resize or a snapshot the volume group has no room for: SRNoSpace (44) before anything changes', async () => {
    const lvm = await srLvm();
    const lvList = async () => (await lvm.lvs(VG)).map((l) => `${l.name} ${l.sizeBytes}`).sort();
    const free = async () => (await lvm.vgs(VG))[0]!.freeBytes;
    const before = await lvList();
    const tooBig = Math.ceil(((await free()) + 64 * MiB) / (2 * MiB)) * 2 * MiB;
    const c = await fault('vdi_create', 44, { args: createArgs(tooBig, 'too big') }, full());
    assert.match(c.response.kind === 'fault' ? c.response.faultString : '', /needs \d+ bytes/);
    assert.deepEqual(await lvList(), before, 'a refused create leaves the LVs as they were');
    const r = await fault('vdi_resize', 44, vdiArgs(vdi, [String(SIZE + tooBig)]), full());
    assert.match(r.response.kind === 'fault' ? r.response.faultString : '', /needs \d+ bytes/);
    assert.deepEqual(await lvList(), before, 'a refused resize leaves the LVs as they were');
    // A filler leaves room for one thick leaf of `vdi` but not for the two a snapshot makes.
    const thick = thickSizeFor(SIZE, batRoomFor(SIZE));
    let fillerSize = Math.floor(((await free()) - 1.5 * thick) / (2 * MiB)) * 2 * MiB;
    while (thickSizeFor(fillerSize, batRoomFor(fillerSize)) > (await free()) - 1.5 * thick) fillerSize -= 2 * MiB;
    const filler = ((await ok('vdi_create', { args: createArgs(fillerSize, 'filler') }, full())).value as { uuid: string }).uuid;
    const left = await free();
    assert.ok(left >= thick && left < 2 * thick, `room for one leaf, not two (${left} free, ${thick} a leaf)`);
    const withFiller = await lvList();
    await fault('vdi_snapshot', 44, vdiArgs(vdi), full());
    assert.deepEqual(await lvList(), withFiller, 'a refused snapshot leaves the LVs as they were');
    await ok('vdi_delete', { vdi_uuid: filler, vdi_location: filler }, full());
    await activate(vdi);
    assert.ok((await exportVdi(vdi)).equals(models.get(vdi)!.bytes), 'the VDI reads as its model');
    await deactivate(vdi, true);
    assert.deepEqual(await lvList(), before);
  });

  it('sr_delete refuses a non-empty SR, then deletes the VG once the VDIs are gone', async () => {
    await fault('sr_delete', 39, {}, full()); // SRNotEmpty
    for (const u of [...models.keys()]) await ok('vdi_delete', { vdi_uuid: u, vdi_location: u }, full());
    await ok('sr_detach', {}, full());
    await ok('sr_delete', {}, full());
    const { value } = await ok('sr_probe', {}, full());
    assert.match(String(value), /<SRlist\/>/);
    assert.equal(await iscsi.findSession(IQN, ADDR, PORT), undefined);
  });
});
