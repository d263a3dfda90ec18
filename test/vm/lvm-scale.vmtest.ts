// Verb cost against the SR's size on LVM (opt-in: not part of the default tier;
// `flock /var/tmp/smvm.lock bash test/vm/run-tier.sh lvm-scale`). One LVMoISCSI
// SR on a tgtd LUN in the guest, served by `drivers/LVMoISCSISR --serve` (the
// resident server, so Node's start-up is not in the figures). The SR is filled
// through vdi_create calls to that server, exactly as a toolstack would fill
// it, to each size in turn (env LVM_SCALE_SIZES, default 100,1000; run-tier.sh
// passes SMVM_PASS_LVM_SCALE_SIZES); at each size 15 rounds of vdi_create,
// vdi_snapshot of the new VDI and vdi_delete of that snapshot are timed, then
// the LVM commands the verbs run are timed alone, as they are and with the
// settings that could make them cheaper, so the choice is measured, not guessed.
// Figures go to stdout and $SMVM_OUT/lvm-scale.txt (written as the run goes, so
// a run cut short still leaves what it reached).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { appendFileSync } from 'node:fs';
import { mkdtemp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { randomUUID } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import * as iscsi from '../../lib/os/iscsi.js';
import { lvmConfig } from '../../lib/os/lvm.js';
import { runTool } from '../../lib/os/run.js';
import { callUnixSocket, encodeMethodCall, parseMethodResponse } from '../../lib/smapi/index.js';
import { mapLimit } from '../../lib/util/map-limit.js';
import { OUT, requireGuest, sparseFile, startDaemon, until } from './support/guest.js';
import type { Daemon } from './support/guest.js';
import { Tgt } from './support/tgt.js';

requireGuest();
const pexec = promisify(execFile);
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const ADDR = '127.0.0.1';
const PORT = 3260;
const IQN = 'iqn.2024-01.test.smvm:lvmscale';
const DRIVER = join(process.cwd(), 'drivers', 'LVMoISCSISR');
const SR = randomUUID();
const VG = `VG_XenStorage-${SR}`;
/** As the File SR bench (test/bench/sr.bench.ts): 1 GiB VDIs, thick on LVM. */
const VDI_SIZE = GiB;
const ROUNDS = 15;
/**
 * Creates in flight while filling. One: every create takes the SR lock, so a
 * second one in flight only waits for it, and a create slower than the lock
 * wait (60 s, which happened once under TCG) would fail the fill with LockErr.
 */
const FILL_CONCURRENCY = 1;
const SIZES = (process.env.LVM_SCALE_SIZES ?? '100,1000').split(',').map(Number);
/**
 * LVM_SCALE_END_BY (an ISO time): filling stops early enough to measure before
 * then, and the figures are for the size reached. Unset: every size is filled.
 */
const END_BY = process.env.LVM_SCALE_END_BY ? Date.parse(process.env.LVM_SCALE_END_BY) : Infinity;
/** What the rounds and the LVM commands at one size take under TCG, with room to spare. */
const MEASURE_MS = 9 * 60_000;

let smRoot = '';
let scsiId = '';
const env = () => ({ ...process.env, SM_ROOT: smRoot, SM_GC: 'off' });
const dc = () => ({ SRmaster: 'true', target: ADDR, targetIQN: IQN, SCSIid: scsiId });

function note(line: string): void {
  console.log(`LVMSCALE ${line}`);
  appendFileSync(join(OUT, 'lvm-scale.txt'), `${new Date().toISOString()} ${line}\n`);
}

/** One call through the driver executable (process per call), for the SR's set-up. */
async function driverCall(verb: string, extra: Record<string, unknown>): Promise<unknown> {
  const xml = encodeMethodCall(verb, [{ host_ref: 'OpaqueRef:host-1', session_ref: 'OpaqueRef:s', command: verb, args: [], sr_uuid: SR, ...extra, device_config: { ...dc(), ...((extra.device_config as object) ?? {}) } }]);
  const r = await pexec(DRIVER, [xml], { env: env(), maxBuffer: 64 * MiB });
  const res = parseMethodResponse(r.stdout);
  if (res.kind === 'fault') throw Object.assign(new Error(`${verb}: ${res.faultCode} ${res.faultString}`), { faultCode: res.faultCode, stderr: r.stderr });
  return res.value;
}

/** A call to the resident server (JSON-RPC over its unix socket); the time it took. */
async function served(socket: string, verb: string, extra: Record<string, unknown> = {}, args: string[] = []): Promise<{ value: unknown; ms: number }> {
  const t0 = performance.now();
  const reply = (await callUnixSocket(socket, verb, { host_ref: 'OpaqueRef:host-1', session_ref: 'OpaqueRef:s', command: verb, args, sr_uuid: SR, device_config: dc(), ...extra })) as {
    result?: unknown;
    error?: { message: string };
  };
  if (reply.error) throw new Error(`${verb}: ${reply.error.message}`);
  return { value: reply.result, ms: performance.now() - t0 };
}

const createArgs = (label: string) => [String(VDI_SIZE), label, '', '', 'false', '', '', 'false'];
const p50 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const ms = (x: number) => `${x.toFixed(0)} ms`;

interface Sample {
  size: number;
  lvs: number;
  create: number[];
  snapshot: number[];
  del: number[];
  lvm: Map<string, number>;
}

/** The LVM commands of the verbs, each timed alone (p50 of 5), as run now and with cheaper settings. */
async function lvmCommandCosts(devices: string[]): Promise<Map<string, number>> {
  const asRun = lvmConfig(devices, true);
  const noUdevSync = lvmConfig(devices, false);
  const lvm = (cfg: string, cmd: string, args: string[]) => runTool(cmd, ['--config', cfg, ...args], { timeoutMs: 300_000, env: { LVM_SUPPRESS_FD_WARNINGS: '1' } });
  const out = new Map<string, number>();
  const time = async (what: string, fn: (i: number) => Promise<unknown>, reps = 5) => {
    const xs: number[] = [];
    for (let i = 0; i < reps; i++) {
      const t0 = performance.now();
      await fn(i);
      xs.push(performance.now() - t0);
    }
    out.set(what, p50(xs));
  };
  const report = ['--reportformat', 'json', '--units', 'b', '--nosuffix'];
  await time('lvs of the whole VG (listImages)', () => lvm(asRun, 'lvs', [...report, '-o', 'lv_name,vg_name,lv_size,lv_tags,lv_attr', VG]));
  await time('lvs of one LV', () => lvm(asRun, 'lvs', [...report, '-o', 'lv_name,vg_name,lv_size,lv_tags,lv_attr', `${VG}/MGT`]));
  await time('vgs of the VG (space)', () => lvm(asRun, 'vgs', [...report, '-o', 'vg_name,vg_size,vg_free', VG]));
  // An LV made, deactivated and removed per variant: lvcreate's cost with each setting.
  const variants: Array<[string, string, string[]]> = [
    ['lvcreate active, zeroed (as run)', asRun, []],
    ['lvcreate active, -Zn -Wn (no zeroing, no signature wipe)', asRun, ['-Zn', '-Wn']],
    ['lvcreate active, udev_sync=0', noUdevSync, []],
    ['lvcreate active, udev_sync=0, -Zn -Wn', noUdevSync, ['-Zn', '-Wn']],
  ];
  for (const [what, cfg, extra] of variants) {
    const names: string[] = [];
    await time(what, (i) => {
      const lv = `scale-${names.length}-${i}-${randomUUID().slice(0, 8)}`;
      names.push(lv);
      return lvm(cfg, 'lvcreate', ['-y', ...extra, '-n', lv, '-L', `${8 * MiB}b`, VG]);
    });
    await time(`  then lvchange -an (${cfg === asRun ? 'as run' : 'udev_sync=0'})`, (i) => lvm(cfg, 'lvchange', ['-an', `${VG}/${names[i]}`]));
    await time(`  then lvchange -ay (${cfg === asRun ? 'as run' : 'udev_sync=0'})`, (i) => lvm(cfg, 'lvchange', ['-ay', `${VG}/${names[i]}`]));
    await time(`  then lvremove (${cfg === asRun ? 'as run' : 'udev_sync=0'})`, (i) => lvm(cfg, 'lvremove', ['-f', `${VG}/${names[i]}`]));
  }
  return out;
}

describe('lvm-scale', { timeout: 4 * 3600_000 }, () => {
  let tgt: Tgt | undefined;
  let iscsid: Daemon | undefined;
  let server: ChildProcess | undefined;
  let socket = '';
  const samples: Sample[] = [];
  let vdis = 0;

  before(async () => {
    smRoot = await mkdtemp('/tmp/smroot-lvmscale-');
    tgt = await Tgt.start(ADDR, PORT, `${OUT}/tgtd-lvmscale.log`);
    // Sparse: only LVM metadata, VHD metadata and MGT records are ever written.
    await tgt.addTarget(1, IQN, [await sparseFile('/tmp/lun-lvmscale.img', 2048 * GiB)]);
    iscsid = startDaemon('iscsid', ['-f'], `${OUT}/iscsid-lvmscale.log`);
    await until('iscsid', async () => (await readFile('/proc/net/unix', 'utf8')).includes('ISCSIADM_ABSTRACT_NAMESPACE'));
  });

  after(async () => {
    server?.kill('SIGTERM');
    await iscsi.logout(IQN, ADDR, PORT).catch(() => {});
    await iscsid?.kill();
    await tgt?.stop();
    await pexec('cp', [join(smRoot, 'var', 'log', 'SMlog'), join(OUT, 'lvm-scale-SMlog')]).catch(() => {});
  });

  it('sr_create and sr_attach, then the resident server', async () => {
    const e = await driverCall('sr_probe', { device_config: { SCSIid: '' } }).catch((x: { faultCode?: number; stderr?: string }) => x);
    const m = /<SCSIid>([^<]+)<\/SCSIid>/.exec((e as { stderr?: string }).stderr ?? '');
    assert.ok(m, `probe lists the LUN (${String(e)})`);
    scsiId = m[1]!;
    await driverCall('sr_create', { args: ['0'] });
    await driverCall('sr_attach', {});
    socket = join(smRoot, 'scale.sock');
    server = spawn(DRIVER, ['--serve', socket], { env: env(), stdio: 'ignore' });
    await until('the resident server', () => served(socket, 'sr_get_driver_info').then(() => true, () => false), 60_000);
  });

  for (const size of SIZES) {
    it(`filled to ${size} VDIs through vdi_create: vdi_create, vdi_snapshot, vdi_delete p50 of ${ROUNDS}; LVM commands alone`, async (t) => {
      if (Date.now() > END_BY - MEASURE_MS) {
        note(`${size}: not measured: LVM_SCALE_END_BY leaves no time (${vdis} VDIs reached)`);
        t.skip('no time left');
        return;
      }
      const t0 = performance.now();
      const from = vdis;
      let last = performance.now();
      let slowest = 0;
      const timeUp = () => Date.now() > END_BY - MEASURE_MS;
      await mapLimit(
        Array.from({ length: size - from }, (_, i) => from + i),
        FILL_CONCURRENCY,
        async (i) => {
          if (timeUp()) return;
          const { ms: took } = await served(socket, 'vdi_create', {}, createArgs(`fill${i}`));
          slowest = Math.max(slowest, took);
          vdis++;
          if ((i + 1) % 50 === 0) {
            note(`fill: ${i + 1} VDIs (last 50 in ${((performance.now() - last) / 1000).toFixed(0)} s)`);
            last = performance.now();
          }
        },
      );
      const reached = vdis;
      note(`fill: ${reached - from} vdi_create calls to reach ${reached} VDIs${reached < size ? ` (of ${size}: time was up)` : ''} took ${((performance.now() - t0) / 1000).toFixed(0)} s (the slowest ${ms(slowest)})`);

      const s: Sample = { size: reached, lvs: 0, create: [], snapshot: [], del: [], lvm: new Map() };
      for (let r = 0; r < ROUNDS; r++) {
        const c = await served(socket, 'vdi_create', {}, createArgs(`measured${reached}-${r}`));
        const u = (c.value as { uuid: string }).uuid;
        const sn = await served(socket, 'vdi_snapshot', { vdi_uuid: u, vdi_location: u });
        const snapUuid = (sn.value as { uuid: string }).uuid;
        const d = await served(socket, 'vdi_delete', { vdi_uuid: snapUuid, vdi_location: snapUuid });
        s.create.push(c.ms);
        s.snapshot.push(sn.ms);
        s.del.push(d.ms);
        note(`${reached}: round ${r + 1}: vdi_create ${ms(c.ms)}, vdi_snapshot ${ms(sn.ms)}, vdi_delete ${ms(d.ms)}`);
      }
      vdis += ROUNDS;
      const rec = JSON.parse(await readFile(join(smRoot, 'run', 'sm', 'sr', `${SR}.json`), 'utf8')) as { backend: { devices: string[] } };
      const list = await runTool('lvs', ['--config', lvmConfig(rec.backend.devices, true), '--noheadings', '-o', 'lv_name', VG], { timeoutMs: 300_000 });
      s.lvs = list.stdout.split('\n').filter((l) => l.trim()).length;
      s.lvm = await lvmCommandCosts(rec.backend.devices);
      samples.push(s);
      note(`${reached} VDIs (${s.lvs} LVs): vdi_create / vdi_snapshot / vdi_delete p50 ${ms(p50(s.create))} / ${ms(p50(s.snapshot))} / ${ms(p50(s.del))}`);
      for (const [what, x] of s.lvm) note(`${reached} VDIs (${s.lvs} LVs): ${what}: ${ms(x)}`);
      assert.ok(s.lvs >= reached, `the VG holds the ${reached} VDIs' LVs (${s.lvs})`);
    });
  }

  it('the figures, small against big (same run)', (t) => {
    if (samples.length < 2) {
      note(`only ${samples.length} size(s) measured: no ratio`);
      t.skip('fewer than two sizes measured');
      return;
    }
    const small = samples[0]!;
    const big = samples[samples.length - 1]!;
    const ratio = (of: (x: Sample) => number) => (of(big) / of(small)).toFixed(2);
    const rows: [string, string][] = [
      ...samples.map((x) => [`${x.size} VDIs (${x.lvs} LVs): vdi_create / vdi_snapshot / vdi_delete (of the snapshot), p50`, `${ms(p50(x.create))} / ${ms(p50(x.snapshot))} / ${ms(p50(x.del))}`] as [string, string]),
      [`ratio ${big.size} / ${small.size}: vdi_create, vdi_snapshot, vdi_delete (File SR goal <= 1.5)`, `${ratio((x) => p50(x.create))}, ${ratio((x) => p50(x.snapshot))}, ${ratio((x) => p50(x.del))}`],
      ...[...small.lvm.keys()].map((k) => [`LVM alone: ${k}, ${small.size} / ${big.size} VDIs`, `${ms(small.lvm.get(k)!)} / ${ms(big.lvm.get(k) ?? NaN)}`] as [string, string]),
    ];
    const w = Math.max(...rows.map(([k]) => k.length));
    note(`== verb cost against SR size (LVMoISCSI SR through --serve, TCG guest; ${ROUNDS} creates, snapshots and deletes each)`);
    for (const [k, v] of rows) note(`  ${k.padEnd(w)}  ${v}`);
  });
});
