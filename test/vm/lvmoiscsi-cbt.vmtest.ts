// Changed-block tracking on an LVMoISCSI SR (docs/cbt.md), through the
// driver's executable as a toolstack calls it, against tgtd in the guest:
// each VDI's log is its own LV `<uuid>.cbtlog` in the SR's VG, active only
// where it is used (the datapath while the VDI is active, a verb while it
// reads or writes the log). Writes of known 64 KiB blocks through NBD between
// two snapshots are listed exactly by vdi_list_changed_blocks; data destroy
// keeps the snapshot's log, resize grows the log, disable removes the VDI's
// log, scan and the GC leave logs alone, and deleting every VDI leaves no log LV.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { CBT_BLOCK_SIZE, fromXapiBase64, isSet, readLog, type CbtLog } from '../../lib/cbt/index.js';
import * as iscsi from '../../lib/os/iscsi.js';
import { Lvm } from '../../lib/os/lvm.js';
import { encodeMethodCall, parseMethodResponse } from '../../lib/smapi/index.js';
import { logLvBytes } from '../../lib/sr/lvm-cbt-logs.js';
import { writeServed } from '../helpers/nbd-vdi.js';
import type { SmEnv } from '../helpers/sm.js';
import { OUT, requireGuest, sparseFile, startDaemon, until, type Daemon } from './support/guest.js';
import { Tgt } from './support/tgt.js';

requireGuest();
const pexec = promisify(execFile);
const MiB = 1024 * 1024;
const BLOCK = CBT_BLOCK_SIZE;
const ADDR = '127.0.0.1';
const PORT = 3260;
const IQN = 'iqn.2024-01.test.smvm:lvmcbt';
const DRIVER = join(process.cwd(), 'drivers', 'LVMoISCSISR');
const SM_GC = join(process.cwd(), 'dist', 'gc', 'sm-gc.js');
const SR = randomUUID();
const VG = `VG_XenStorage-${SR}`;
const SIZE = 64 * MiB;

let smRoot = '';
let scsiId = '';
const env = () => ({ ...process.env, SM_ROOT: smRoot, SM_GC: 'off', ORIGINATOR: 'SM' });
const dc = () => ({ SRmaster: 'true', target: ADDR, targetIQN: IQN, SCSIid: scsiId });
const vdiArgs = (u: string, args: string[] = []) => ({ vdi_uuid: u, vdi_location: u, args });

const argvOf = (verb: string, extra: Record<string, unknown>) => [
  encodeMethodCall(verb, [{ host_ref: 'OpaqueRef:host-1', session_ref: 'OpaqueRef:session-1', command: verb, args: [], sr_uuid: SR, ...extra, device_config: dc() }]),
];

async function ok(verb: string, extra: Record<string, unknown> = {}): Promise<unknown> {
  const start = performance.now();
  const r = await pexec(DRIVER, argvOf(verb, extra), { env: env(), maxBuffer: 64 * MiB });
  console.log(`LVMCBT TIME ${verb} ${(performance.now() - start).toFixed(0)}ms`);
  const response = parseMethodResponse(r.stdout);
  if (response.kind === 'fault') assert.fail(`${verb} failed: ${response.faultCode} ${response.faultString}`);
  return response.value;
}

/** The verb run with SM_FAULT=point: it must kill itself there. */
async function killedAt(point: string, verb: string, extra: Record<string, unknown>): Promise<void> {
  const signal = await pexec(DRIVER, argvOf(verb, extra), { env: { ...env(), SM_FAULT: point } }).then(
    () => undefined,
    (e: { signal?: string }) => e.signal,
  );
  assert.equal(signal, 'SIGKILL', `${verb} should die at ${point}`);
}

const uuidOf = (value: unknown) => (value as { uuid: string }).uuid;

/** LVM confined to the attached SR's device, as the driver runs it. */
async function srLvm(): Promise<Lvm> {
  const rec = JSON.parse(await readFile(join(smRoot, 'run', 'sm', 'sr', `${SR}.json`), 'utf8')) as { backend: { devices: string[] } };
  return new Lvm({ devices: rec.backend.devices });
}

/** The SR's log LVs by VDI: size and whether active. */
async function logLvs(): Promise<Map<string, { size: number; active: boolean }>> {
  const out = new Map<string, { size: number; active: boolean }>();
  for (const lv of await (await srLvm()).lvs(VG)) {
    if (lv.name.endsWith('.cbtlog')) out.set(lv.name.slice(0, -'.cbtlog'.length), { size: lv.sizeBytes, active: lv.active });
  }
  return out;
}

/** The SR's log LVs, made or being made, by name. */
const lvNames = async () => (await (await srLvm()).lvs(VG)).map((l) => l.name).filter((n) => n.includes('.cbtlog')).sort();

const activeLvNames = async () => (await (await srLvm()).lvs(VG)).filter((l) => l.active && l.name !== 'MGT').map((l) => l.name).sort();

/** Reads a log from its LV, activating it for the read when it is inactive (and deactivating it again). */
async function readLogLv(vdi: string): Promise<CbtLog> {
  const lvm = await srLvm();
  const name = `${vdi}.cbtlog`;
  const wasActive = (await lvm.lv(VG, name))?.active === true;
  if (!wasActive) await lvm.setActive(VG, [name], true);
  try {
    return await readLog(Lvm.lvPath(VG, name));
  } finally {
    if (!wasActive) await lvm.setActive(VG, [name], false);
  }
}

const setBlocks = (bitmap: Buffer): number[] => Array.from({ length: bitmap.length * 8 }, (_, i) => i).filter((i) => isSet(bitmap, i));

/** Blocks a write of `length` bytes at `offset` touches. */
const touched = (offset: number, length: number): number[] => {
  const out: number[] = [];
  for (let b = Math.floor(offset / BLOCK); b <= Math.floor((offset + length - 1) / BLOCK); b++) out.push(b);
  return out;
};

const nbdCtx = () => ({ root: smRoot, base: smRoot, sr: SR }) as unknown as SmEnv;

async function writeAll(vdi: string, writes: [number, number][]): Promise<number[]> {
  for (const [offset, length] of writes) await writeServed(nbdCtx(), vdi, offset, randomBytes(length));
  return [...new Set(writes.flatMap(([o, l]) => touched(o, l)))].sort((a, b) => a - b);
}

interface ScannedVdi {
  uuid: string;
  type: string;
  virtual_size: number;
  cbt_enabled: boolean;
}

/** sr_scan through JSON-RPC, which returns the VDI records. */
async function scanJson(): Promise<ScannedVdi[]> {
  const request = { jsonrpc: '2.0', id: 1, method: 'sr_scan', params: { host_ref: 'OpaqueRef:host-1', command: 'sr_scan', args: [], sr_uuid: SR, device_config: dc() } };
  const child = execFile(DRIVER, ['--json'], { env: env(), maxBuffer: 64 * MiB });
  child.stdin!.end(JSON.stringify(request));
  const stdout = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', () => resolve(out));
  });
  const reply = JSON.parse(stdout) as { result?: ScannedVdi[]; error?: unknown };
  assert.equal(reply.error, undefined, `sr_scan: ${JSON.stringify(reply.error)}`);
  return reply.result!;
}

async function changed(from: string, to: string): Promise<number[]> {
  return setBlocks(fromXapiBase64(String(await ok('vdi_list_changed_blocks', vdiArgs(from, [to])))));
}

describe('lvmoiscsi-cbt', { timeout: 1_800_000 }, () => {
  let tgt: Tgt | undefined;
  let iscsid: Daemon | undefined;

  before(async () => {
    smRoot = await mkdtemp('/tmp/smroot-lvmcbt-');
    tgt = await Tgt.start(ADDR, PORT, `${OUT}/tgtd-lvmcbt.log`);
    await tgt.addTarget(1, IQN, [await sparseFile('/tmp/lun-lvmcbt.img', 512 * MiB)]);
    iscsid = startDaemon('iscsid', ['-f'], `${OUT}/iscsid-lvmcbt.log`);
    await until('iscsid', async () => (await readFile('/proc/net/unix', 'utf8')).includes('ISCSIADM_ABSTRACT_NAMESPACE'));
    // The LUN's SCSIid, from the probe's LUN list.
    const argv = [encodeMethodCall('sr_probe', [{ host_ref: 'OpaqueRef:host-1', session_ref: 'OpaqueRef:session-1', command: 'sr_probe', args: [], sr_uuid: SR, device_config: { target: ADDR, targetIQN: IQN } }])];
    const probe = await pexec(DRIVER, argv, { env: env() });
    scsiId = /<SCSIid>([^<]+)<\/SCSIid>/.exec(probe.stderr)?.[1] ?? '';
    assert.ok(scsiId, 'the probe lists the LUN');
    await ok('sr_create', { args: ['0'], sr_sm_config: { name_label: 'lvm cbt SR' } });
    await ok('sr_attach');
  });

  after(async () => {
    await iscsi.logout(IQN, ADDR, PORT).catch(() => {});
    await iscsid?.kill();
    await tgt?.stop();
    await pexec('cp', [join(smRoot, 'var', 'log', 'SMlog'), join(OUT, 'lvmoiscsi-cbt-SMlog')]).catch(() => {});
  });

  it('VDI_CONFIG_CBT advertised; a log LV per VDI, active only where used; changed blocks between snapshots exact; data destroy, resize, disable, scan, GC, delete', async () => {
    const info = (await ok('sr_get_driver_info')) as { capabilities: string[] };
    assert.ok(info.capabilities.includes('VDI_CONFIG_CBT'), 'LVMoISCSISR advertises VDI_CONFIG_CBT');

    const V = uuidOf(await ok('vdi_create', { args: [String(SIZE), 'tracked', '', '', 'false', '', '', 'false'] }));
    // Killed with the new log written under its temporary name: no log yet, and the next enable makes it whole.
    await killedAt('cbt-log-lv-written', 'vdi_enable_cbt', vdiArgs(V));
    assert.deepEqual(await lvNames(), [`${V}.cbtlog.tmp`], 'only the half-made log LV');
    assert.ok((await scanJson()).find((v) => v.uuid === V)?.cbt_enabled === false, 'scan: CBT not enabled');
    await ok('vdi_enable_cbt', vdiArgs(V));
    assert.deepEqual(await lvNames(), [`${V}.cbtlog`], 'enabled again: the log LV, the leftover gone');
    let logs = await logLvs();
    assert.deepEqual([...logs.keys()], [V], 'enable: the VDI has its log LV');
    assert.equal(logs.get(V)!.size, logLvBytes(SIZE), 'sized for the log of the virtual size, rounded up to the extent');
    assert.equal(logs.get(V)!.active, false, 'inactive once the verb is done');
    const fresh = await readLogLv(V);
    assert.equal(fresh.size, SIZE, 'a log of the disk size');
    assert.ok(fresh.consistent, 'consistent');
    assert.deepEqual(setBlocks(fresh.bitmap), [], 'no block changed yet');

    await ok('vdi_attach', vdiArgs(V, ['true']));
    await ok('vdi_activate', vdiArgs(V, ['true']));
    assert.equal((await logLvs()).get(V)!.active, true, 'active with the VDI: its datapath marks it');
    assert.equal((await readLogLv(V)).consistent, false, 'held open by the datapath');

    // Known blocks: whole blocks, a write across a boundary, a small one, the last block.
    const A = await writeAll(V, [[0, BLOCK], [5 * BLOCK, 2 * BLOCK], [17 * BLOCK + 60 * 1024, 8 * 1024], [1023 * BLOCK + 512, 512]]);
    // A snapshot killed while its log LV is being made: rolled back by the next verb, the VDI's log untouched.
    await killedAt('cbt-log-lv-written', 'vdi_snapshot', vdiArgs(V));
    await ok('sr_scan');
    assert.deepEqual(await lvNames(), [`${V}.cbtlog`], "the rollback removed the snapshot's half-made log LV");
    assert.equal((await logLvs()).get(V)!.active, true, "the VDI's log is still its datapath's");
    const S1 = uuidOf(await ok('vdi_snapshot', vdiArgs(V)));
    const s1Log = await readLogLv(S1);
    assert.deepEqual(setBlocks(s1Log.bitmap), A, "S1's log: the blocks written before it, none missed across the killed snapshot");
    assert.equal(s1Log.child, V, 'S1 -> V');
    assert.equal((await readLogLv(V)).parent, S1, 'V <- S1');
    logs = await logLvs();
    assert.ok(logs.has(S1) && !logs.get(S1)!.active, 'the snapshot has the log (its LV inactive)');
    assert.equal(logs.get(V)!.active, true, "the VDI's new log stays active for its datapath");

    const B = await writeAll(V, [[2 * BLOCK, BLOCK], [9 * BLOCK + 4096, BLOCK], [300 * BLOCK, 3 * BLOCK + 1], [1000 * BLOCK + 100, 1]]);
    assert.deepEqual(B, [2, 9, 10, 300, 301, 302, 303, 1000]);
    const S2 = uuidOf(await ok('vdi_snapshot', vdiArgs(V)));
    assert.deepEqual(await changed(S1, S2), B, 'S1 -> S2: every block written, no other');

    await ok('vdi_deactivate', vdiArgs(V));
    await ok('vdi_detach', vdiArgs(V));
    assert.deepEqual(await activeLvNames(), [], 'deactivated: its chain and its log');
    assert.equal((await readLogLv(V)).consistent, true, 'closed cleanly');

    await ok('vdi_data_destroy', vdiArgs(S1));
    const lvm = await srLvm();
    assert.equal(await lvm.lv(VG, `VHD-${S1}`), undefined, "data destroy: the snapshot's image is gone");
    assert.ok((await logLvs()).has(S1), 'its log stays');
    const scanned = await scanJson();
    const s1 = scanned.find((v) => v.uuid === S1);
    assert.equal(s1?.type, 'cbt_metadata', 'scan reports the data-destroyed snapshot as cbt_metadata');
    assert.equal(s1?.virtual_size, SIZE, "with its log's size");
    assert.ok(scanned.every((v) => !v.uuid.includes('cbtlog')), 'no log LV taken for an image');
    await pexec('node', [SM_GC, '-u', SR, '-g'], { env: env() });
    assert.deepEqual([...(await logLvs()).keys()].sort(), [V, S1, S2].sort(), 'scan and the GC keep every log');
    assert.deepEqual(await changed(S1, S2), B, 'the cbt_metadata VDI still answers after scan and GC');
    assert.deepEqual(await activeLvNames(), [], 'scan, GC and the verbs leave every LV inactive');

    await ok('vdi_resize', vdiArgs(V, [String(2 * SIZE)]));
    assert.equal((await readLogLv(V)).size, 2 * SIZE, 'resize grows the log with the VDI');

    await ok('vdi_disable_cbt', vdiArgs(V));
    assert.deepEqual([...(await logLvs()).keys()].sort(), [S1, S2].sort(), "disable: the VDI's log LV removed, its snapshots' stay");
    assert.deepEqual(await changed(S1, S2), B, "the snapshots' logs still answer between themselves");

    for (const u of [S1, S2, V]) await ok('vdi_delete', vdiArgs(u));
    assert.deepEqual([...(await logLvs()).keys()], [], 'every VDI deleted: no log LV left');
    assert.deepEqual(readdirSync(join(smRoot, 'run', 'sm', 'lvhold', SR)), [], 'no LV hold left');
    await ok('sr_detach');
    await ok('sr_delete');
    assert.equal(existsSync(`/dev/${VG}`), false);
  });
});
