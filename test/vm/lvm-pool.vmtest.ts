// Two hosts of a pool on one LVMoISCSI SR, each with its own kernel: this
// guest (host A) is the SR master and serves the LUN with tgtd; the peer guest
// (host B, support/peer.ts) logs in to it over the guests' link. Each kernel
// keeps its own device-mapper nodes, so an LV the master renames, grows or
// removes is still mapped on B as B activated it: B must let go of a VDI's LVs
// while the master changes them and map them afresh before it reopens the
// chain (lib/sr/host-pause.ts, LvmBackend.beforeRemoteChange/afterRemoteChange).
//
// xapi cannot run here: the stand-in (test/helpers/xapi-standin.ts) is the
// pool's one database, on A's socket; B's socket reaches it over the link, and
// its host.call_plugin for B runs B's real tapdisk-pause plugin on B, as xapi
// runs /etc/xapi.d/plugins/tapdisk-pause on that host.
//
// B writes a VDI through its datapath while A snapshots it and, later, while
// A's GC relinks its chain (B refreshed) and merges its leaf (B paused). Every
// byte is checked as B reads it and as A reads it once B let go, and B maps no
// LV the VG no longer has.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { fromXapiBase64, isSet } from '../../lib/cbt/index.js';
import * as iscsi from '../../lib/os/iscsi.js';
import { encodeMethodCall, parseMethodResponse } from '../../lib/smapi/index.js';
import { run, SESSION_SECRET } from '../helpers/sm.js';
import { pluginAnswer, XapiStandin } from '../helpers/xapi-standin.js';
import { OUT, requireGuest, sparseFile, startDaemon, until, type Daemon } from './support/guest.js';
import { Peer, peerConfigured, serveTcpToUnix } from './support/peer.js';
import { Tgt } from './support/tgt.js';

requireGuest();
const pexec = promisify(execFile);
const MiB = 1024 * 1024;
const PORT = 3260;
const XAPI_PORT = 7101;
const IQN = 'iqn.2024-01.test.smvm:lvmpool';
const REPO = process.cwd();
const DRIVER = join(REPO, 'drivers', 'LVMoISCSISR');
const PLUGIN = join(REPO, 'drivers', 'tapdisk-pause');
const SM_GC = join(REPO, 'dist', 'gc', 'sm-gc.js');
const SR = randomUUID();
const VG = `VG_XenStorage-${SR}`;
const SR_REF = 'OpaqueRef:sr-pool';
const HOST_A = { ref: 'OpaqueRef:host-A', uuid: randomUUID() };
const HOST_B = { ref: 'OpaqueRef:host-B', uuid: randomUUID() };
const ROOT_B = '/tmp/smroot-poolB';

let rootA = '';
let scsiId = '';
let peer: Peer;
let xapi: XapiStandin;
const pluginRuns: string[] = [];

const envA = () => ({ ...process.env, SM_ROOT: rootA, SM_GC: 'off', ORIGINATOR: 'SM' });
const envB = { SM_ROOT: ROOT_B, SM_GC: 'off', ORIGINATOR: 'SM' };
const dc = (master: boolean) => ({ SRmaster: master ? 'true' : 'false', target: peer.localAddress, targetIQN: IQN, SCSIid: scsiId });
const vdiArgs = (u: string, args: string[] = []) => ({ vdi_uuid: u, vdi_location: u, args });
const uuidOf = (value: unknown) => (value as { uuid: string }).uuid;

/** The methodCall a toolstack sends a host's driver, with the pool's session. */
function callArgv(host: { ref: string }, master: boolean, verb: string, extra: Record<string, unknown>): string {
  return encodeMethodCall(verb, [{ host_ref: host.ref, session_ref: SESSION_SECRET, command: verb, args: [], sr_uuid: SR, sr_ref: SR_REF, ...extra, device_config: dc(master) }]);
}

function value(verb: string, stdout: string, stderr: string): unknown {
  const response = parseMethodResponse(stdout);
  if (response.kind === 'fault') assert.fail(`${verb} failed: ${response.faultCode} ${response.faultString}\nstderr: ${stderr}`);
  return response.value;
}

/** A verb on host A, the SR master. */
async function onA(verb: string, extra: Record<string, unknown> = {}): Promise<unknown> {
  const r = await pexec(DRIVER, [callArgv(HOST_A, true, verb, extra)], { env: envA(), maxBuffer: 64 * MiB });
  return value(verb, r.stdout, r.stderr);
}

/** A verb on host B, as xapi sends it there (B's host ref, SRmaster=false). */
async function onB(verb: string, extra: Record<string, unknown> = {}): Promise<unknown> {
  const r = await peer.run([DRIVER, callArgv(HOST_B, false, verb, extra)], { env: envB, timeoutMs: 300_000 });
  assert.equal(r.code, 0, `${verb} on B: exit 0 (stderr: ${r.stderr})`);
  return value(verb, r.stdout, r.stderr);
}

/** xapi's host.call_plugin on host B: B's plugin executable, params [session, args], its `Value` returned. */
async function pluginOnB(fn: string, args: Record<string, string>): Promise<string> {
  const r = await peer.run([PLUGIN, encodeMethodCall(fn, [SESSION_SECRET, args])], { env: envB, timeoutMs: 300_000 });
  const answer = pluginAnswer(r.stdout, r.stderr);
  pluginRuns.push(`${fn} -> ${answer}`);
  return answer;
}

/** qemu-io commands on the VDI as a host serves it; each must succeed, every read matching its pattern. */
async function io(host: 'A' | 'B', vdi: string, commands: string[], readOnly = false): Promise<void> {
  const root = host === 'A' ? rootA : ROOT_B;
  const socket = join(root, 'run', 'blktap-control', 'nbd', SR, vdi);
  const short = `/tmp/nbd-${host}-${vdi.slice(0, 8)}`; // a unix socket address holds at most 107 bytes
  const argv = ['qemu-io', ...(readOnly ? ['-r'] : []), '-f', 'raw', ...commands.flatMap((c) => ['-c', c]), `nbd:unix:${short}:exportname=${vdi}`];
  const ln = ['ln', '-sfn', socket, short];
  const r = host === 'A' ? await run(ln[0]!, ln.slice(1)).then(() => run(argv[0]!, argv.slice(1), { timeoutMs: 120_000 })) : await peer.runOk(ln).then(() => peer.run(argv, { timeoutMs: 120_000 }));
  const out = `${r.stdout}${r.stderr}`;
  assert.equal(r.code, 0, `qemu-io on ${host}: ${out}`);
  assert.doesNotMatch(out, /fail|error/i, `qemu-io on ${host}: ${commands.join('; ')}: ${out}`);
}

/** Reads the VDI on A (the master), served there read-only for the check. */
async function readOnA(vdi: string, commands: string[]): Promise<void> {
  await onA('vdi_attach', vdiArgs(vdi, ['false']));
  await onA('vdi_activate', vdiArgs(vdi, ['false']));
  try {
    await io('A', vdi, commands, true);
  } finally {
    await onA('vdi_deactivate', vdiArgs(vdi));
    await onA('vdi_detach', vdiArgs(vdi));
  }
}

/** B's device-mapper devices of the SR's VG, by LV name, and the LVs the VG's metadata has now (as B reads it). */
async function mappingsOnB(): Promise<{ mapped: string[]; lvs: string[] }> {
  const dm = await peer.runOk(['dmsetup', 'ls']);
  const prefix = `${VG.replaceAll('-', '--')}-`;
  const mapped = dm.stdout.split('\n').map((l) => l.split(/\s+/)[0] ?? '').filter((n) => n.startsWith(prefix)).map((n) => n.slice(prefix.length).replaceAll('--', '-')).sort();
  const lvs = (await peer.runOk(['lvs', '--noheadings', '-o', 'lv_name', VG])).stdout.split('\n').map((l) => l.trim()).filter(Boolean).sort();
  return { mapped, lvs };
}

/** The VHD LVs of the VG (A's view as the master). */
async function vhdLvs(): Promise<string[]> {
  const r = await pexec('lvs', ['--noheadings', '-o', 'lv_name', VG]);
  return r.stdout.split('\n').map((l) => l.trim()).filter((n) => n.startsWith('VHD-')).sort();
}

describe('lvm-pool', { timeout: 2_400_000, skip: peerConfigured() ? false : 'no peer guest (run-tier.sh boots one for this suite)' }, () => {
  let tgt: Tgt | undefined;
  let iscsid: Daemon | undefined;
  let xapiRelay: { close(): Promise<void> } | undefined;

  before(async () => {
    peer = await Peer.connect({ timeoutMs: 300_000 });
    rootA = await mkdtemp('/tmp/smroot-poolA-');
    // Each host's id (INSTALLATION_UUID), as the toolstack knows it.
    await mkdir(join(rootA, 'etc'), { recursive: true });
    await writeFile(join(rootA, 'etc', 'xensource-inventory'), `INSTALLATION_UUID='${HOST_A.uuid}'\n`);
    await peer.runOk(['mkdir', '-p', join(ROOT_B, 'etc'), join(ROOT_B, 'var', 'lib', 'xcp')]);
    await peer.runOk(['tee', join(ROOT_B, 'etc', 'xensource-inventory')], { input: `INSTALLATION_UUID='${HOST_B.uuid}'\n` });

    xapi = await XapiStandin.start(join(rootA, 'var', 'lib', 'xcp', 'xapi'), {
      smSessions: [{ ref: SESSION_SECRET, sr: SR_REF }],
      srs: [{ ref: SR_REF, uuid: SR }],
      hosts: [HOST_A, HOST_B],
      plugin: (host, plugin, fn, args) => (host === HOST_B.ref && plugin === 'tapdisk-pause' ? pluginOnB(fn, args) : `no such host or plugin: ${host} ${plugin}`),
    });
    // B's xapi socket reaches the same database over the link.
    xapiRelay = await serveTcpToUnix(XAPI_PORT, join(rootA, 'var', 'lib', 'xcp', 'xapi'));
    await peer.relayToHere(join(ROOT_B, 'var', 'lib', 'xcp', 'xapi'), XAPI_PORT);

    tgt = await Tgt.start(peer.localAddress, PORT, `${OUT}/tgtd-lvmpool.log`);
    await tgt.addTarget(1, IQN, [await sparseFile('/tmp/lun-lvmpool.img', 512 * MiB)]);
    iscsid = startDaemon('iscsid', ['-f'], `${OUT}/iscsid-lvmpool.log`);
    await until('iscsid', async () => (await readFile('/proc/net/unix', 'utf8')).includes('ISCSIADM_ABSTRACT_NAMESPACE'));
    const probe = await pexec(DRIVER, [callArgv(HOST_A, true, 'sr_probe', {})], { env: envA() }).catch((e: { stderr: string }) => e);
    scsiId = /<SCSIid>([^<]+)<\/SCSIid>/.exec(probe.stderr)?.[1] ?? '';
    assert.ok(scsiId, 'the probe lists the LUN');
    await onA('sr_create', { args: ['0'], sr_sm_config: { name_label: 'pool SR' } });
    await onA('sr_attach');
    // B: its own initiator (a name of its own: guest-peer.sh), logged in over the link by the driver's sr_attach.
    await peer.runOk(['iscsid']);
    await onB('sr_attach');
  });

  after(async () => {
    await onB('sr_detach').catch(() => undefined);
    await peer?.runOk(['cp', join(ROOT_B, 'var', 'log', 'SMlog'), join(OUT, 'lvm-pool-SMlog-B')]).catch(() => undefined);
    await pexec('cp', [join(rootA, 'var', 'log', 'SMlog'), join(OUT, 'lvm-pool-SMlog-A')]).catch(() => undefined);
    await iscsi.logout(IQN, peer.localAddress, PORT).catch(() => {});
    await peer?.run(['iscsiadm', '-k', '0']).catch(() => undefined); // B's initiator, as the next suite expects to find it: not running
    await iscsid?.kill();
    await tgt?.stop();
    await xapiRelay?.close();
    await xapi?.close();
  });

  let V = '';

  it('A snapshots a VDI B writes: B pauses, lets go of its LVs, maps the new chain; every byte where it belongs, seen from B and from A', async () => {
    V = uuidOf(await onA('vdi_create', { args: [String(64 * MiB), 'pool disk', '', '', 'false', '', '', 'false'] }));
    await onB('vdi_attach', vdiArgs(V, ['true']));
    await onB('vdi_activate', vdiArgs(V, ['true']));
    assert.equal((xapi.vdiByUuid(V)!.sm_config as Record<string, string>)[`host_${HOST_B.ref}`], 'RW', "B's activation tagged the VDI");
    await io('B', V, ['write -P 0x11 0 1M']);

    pluginRuns.length = 0;
    const S1 = uuidOf(await onA('vdi_snapshot', vdiArgs(V)));
    assert.deepEqual(pluginRuns, ['pause -> True', 'unpause -> True'], 'A paused and unpaused B through the plugin');

    // Written after the snapshot, over part of what it holds: this must land in V's new leaf, never in the snapshot.
    await io('B', V, ['write -P 0x22 512k 1M', 'read -P 0x11 0 512k', 'read -P 0x22 512k 1M', 'read -P 0 1536k 1M']);
    const { mapped, lvs } = await mappingsOnB();
    assert.deepEqual(mapped.filter((n) => !lvs.includes(n)), [], `B maps only LVs the VG has (mapped ${mapped.join(', ')})`);

    await onB('vdi_deactivate', vdiArgs(V));
    await onB('vdi_detach', vdiArgs(V));
    await readOnA(S1, ['read -P 0x11 0 1M', 'read -P 0 1M 1M']);
    await readOnA(V, ['read -P 0x11 0 512k', 'read -P 0x22 512k 1M', 'read -P 0 1536k 1M']);
    await onA('vdi_delete', vdiArgs(S1));
  });

  it("A's GC relinks and merges the chain of a VDI B writes: B refreshed, then paused for the merge; one image left, every byte kept", async () => {
    assert.ok(V, 'the first test made V');
    await onB('vdi_attach', vdiArgs(V, ['true']));
    await onB('vdi_activate', vdiArgs(V, ['true']));
    // V over b2 over b1: a snapshot, a write, another snapshot, a write, both snapshots deleted.
    const S2 = uuidOf(await onA('vdi_snapshot', vdiArgs(V)));
    await io('B', V, ['write -P 0x33 4M 1M']);
    const S3 = uuidOf(await onA('vdi_snapshot', vdiArgs(V)));
    await io('B', V, ['write -P 0x44 8M 1M']);
    await onA('vdi_delete', vdiArgs(S2));
    await onA('vdi_delete', vdiArgs(S3));
    assert.ok((await vhdLvs()).length >= 3, `a chain of three or more: ${(await vhdLvs()).join(', ')}`);

    pluginRuns.length = 0;
    const gc = await run(process.execPath, [SM_GC, '-u', SR, '-g'], { env: envA(), timeoutMs: 1_200_000 });
    assert.equal(gc.code, 0, `sm-gc -g on A: ${gc.stderr}`);
    assert.deepEqual(await vhdLvs(), [`VHD-${V}`], 'one image left: the chain relinked, then the leaf merged');
    assert.ok(pluginRuns.includes('refresh -> True'), `B refreshed after the relink: ${pluginRuns.join(', ')}`);
    assert.ok(pluginRuns.includes('pause -> True') && pluginRuns.at(-1) === 'unpause -> True', `B paused around the merge: ${pluginRuns.join(', ')}`);
    assert.ok(pluginRuns.every((r) => r.endsWith('-> True')), `every plugin call answered True: ${pluginRuns.join(', ')}`);

    await io('B', V, ['read -P 0x11 0 512k', 'read -P 0x22 512k 1M', 'read -P 0x33 4M 1M', 'read -P 0x44 8M 1M', 'write -P 0x55 12M 1M', 'read -P 0x55 12M 1M']);
    const { mapped, lvs } = await mappingsOnB();
    assert.deepEqual(mapped.filter((n) => !lvs.includes(n)), [], `B maps only LVs the VG has (mapped ${mapped.join(', ')})`);
    await onB('vdi_deactivate', vdiArgs(V));
    await onB('vdi_detach', vdiArgs(V));
    await readOnA(V, ['read -P 0x11 0 512k', 'read -P 0x22 512k 1M', 'read -P 0x33 4M 1M', 'read -P 0x44 8M 1M', 'read -P 0x55 12M 1M', 'read -P 0 16M 1M']);
    await onA('vdi_delete', vdiArgs(V));
  });

  it('A grows, tracks and snapshots a VDI B writes, and deletes a tracked snapshot whose log merges into the one B marks: B pauses each time; every block B wrote is listed, every byte reads back', async () => {
    const W = uuidOf(await onA('vdi_create', { args: [String(32 * MiB), 'tracked pool disk', '', '', 'false', '', '', 'false'] }));
    await onA('vdi_enable_cbt', vdiArgs(W));
    await onB('vdi_attach', vdiArgs(W, ['true']));
    await onB('vdi_activate', vdiArgs(W, ['true']));
    await io('B', W, ['write -P 0x61 0 64k']);
    pluginRuns.length = 0;
    const T1 = uuidOf(await onA('vdi_snapshot', vdiArgs(W)));
    await io('B', W, ['write -P 0x62 1M 64k', 'write -P 0x63 5M 128k']);
    // Grown on A while B serves it: B maps the larger leaf LV afresh, and writes past the old end.
    await onA('vdi_resize', vdiArgs(W, [String(48 * MiB)]));
    await io('B', W, ['write -P 0x64 40M 64k', 'read -P 0x64 40M 64k']);
    const T2 = uuidOf(await onA('vdi_snapshot', vdiArgs(W)));
    // T2's log merges into W's, which B's datapath marks: B paused for the merge, its log LV let go there.
    await onA('vdi_delete', vdiArgs(T2));
    await io('B', W, ['write -P 0x65 2M 64k']);
    const T3 = uuidOf(await onA('vdi_snapshot', vdiArgs(W)));
    assert.deepEqual(pluginRuns, Array(5).fill(['pause -> True', 'unpause -> True']).flat(), 'B paused and unpaused for each of the three snapshots, the resize and the merge');
    const listed = fromXapiBase64(String(await onA('vdi_list_changed_blocks', vdiArgs(T1, [T3]))));
    const blocks = Array.from({ length: listed.length * 8 }, (_, i) => i).filter((i) => isSet(listed, i));
    assert.deepEqual(blocks, [16, 32, 80, 81, 640], 'exactly the 64 KiB blocks B wrote after T1 (through T2, whose log was merged)');

    await io('B', W, ['read -P 0x61 0 64k', 'read -P 0x62 1M 64k', 'read -P 0x65 2M 64k', 'read -P 0x63 5M 128k', 'read -P 0x64 40M 64k']);
    await onB('vdi_deactivate', vdiArgs(W));
    await onB('vdi_detach', vdiArgs(W));
    await readOnA(W, ['read -P 0x61 0 64k', 'read -P 0x62 1M 64k', 'read -P 0x65 2M 64k', 'read -P 0x63 5M 128k', 'read -P 0x64 40M 64k', 'read -P 0 47M 1M']);
    for (const u of [T1, T3, W]) await onA('vdi_delete', vdiArgs(u));
  });
});
