/**
 * A VDI used as a guest uses it, through the kernel's NBD client (DESIGN item
 * 8): `params` of vdi_attach is the /dev/nbdN that vdi_activate connects to
 * the VDI's socket; an ext4 file system is made, mounted and written on it,
 * and must read back the same after deactivate/detach and a new attach.
 * Written once for every SR type: each test file gives its own way to call a
 * verb on an SR it has set up.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { runTool } from '../../../lib/os/run.js';
import { blockdevSize } from './guest.js';

const MiB = 1024 * 1024;

export interface SrUnderTest {
  /** The SR's uuid and the test's SM_ROOT (for params_nbd and SMlog). */
  sr: string;
  smRoot: string;
  /** Calls `verb` on the SR as a toolstack does; a fault fails the test; returns the result. */
  ok(verb: string, extra: Record<string, unknown>): Promise<unknown>;
}

interface Attached {
  device: string;
  paramsNbd: string;
}

const vdiArgs = (vdi: string, args: string[] = []) => ({ vdi_uuid: vdi, vdi_location: vdi, args });
const createArgs = (size: number, label: string) => [String(size), label, '', '', 'false', '', '', 'false'];
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const pidFile = (device: string) => `/sys/block/${basename(device)}/pid`;

/** Whether the kernel holds a connection on the device. */
export const connected = (device: string) => existsSync(pidFile(device));

async function attach(t: SrUnderTest, vdi: string, writable: boolean): Promise<Attached> {
  const r = (await t.ok('vdi_attach', vdiArgs(vdi, [String(writable)]))) as { params: string; params_nbd: string };
  assert.match(r.params, /^\/dev\/nbd\d+$/, `vdi_attach params is a kernel NBD device: ${r.params}`);
  assert.ok(statSync(r.params).isBlockDevice(), `${r.params} is a block device`);
  const socket = join(t.smRoot, 'run', 'blktap-control', 'nbd', t.sr, vdi);
  assert.equal(r.params_nbd, `nbd:unix:${socket}:exportname=${vdi}`, 'params_nbd in the established form');
  assert.equal(connected(r.params), false, `${r.params} is not connected before vdi_activate`);
  return { device: r.params, paramsNbd: r.params_nbd };
}

async function activate(t: SrUnderTest, vdi: string, a: Attached, writable: boolean, size: number): Promise<void> {
  await t.ok('vdi_activate', vdiArgs(vdi, [String(writable)]));
  assert.ok(connected(a.device), `${a.device} connected by vdi_activate`);
  assert.equal(await blockdevSize(a.device), size, `${a.device} has the VDI's virtual size`);
  const ro = (await readFile(`/sys/block/${basename(a.device)}/ro`, 'utf8')).trim();
  assert.equal(ro, writable ? '0' : '1', `${a.device} read-only exactly when attached read-only`);
}

/** vdi_deactivate then vdi_detach; the kernel lets go of the device at the deactivate. */
async function release(t: SrUnderTest, vdi: string, a: Attached): Promise<void> {
  await t.ok('vdi_deactivate', vdiArgs(vdi));
  assert.equal(connected(a.device), false, `${a.device} disconnected by vdi_deactivate`);
  assert.equal(await blockdevSize(a.device), 0, `${a.device} has no size once disconnected`);
  await t.ok('vdi_detach', vdiArgs(vdi));
  assert.equal(connected(a.device), false, `${a.device} still free after vdi_detach`);
}

async function fsckClean(device: string, what: string): Promise<void> {
  const r = await runTool('fsck.ext4', ['-f', '-n', device], { allowCodes: [1, 2, 4, 8], timeoutMs: 120_000 });
  assert.equal(r.code, 0, `fsck.ext4 -n ${what}: exit ${r.code}\n${r.stdout}${r.stderr}`);
}

async function withMount<T>(device: string, readOnly: boolean, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp('/tmp/nbd-mnt-');
  await runTool('mount', [...(readOnly ? ['-o', 'ro'] : []), device, dir], { timeoutMs: 60_000 });
  try {
    return await fn(dir);
  } finally {
    await runTool('umount', [dir], { timeoutMs: 60_000 });
    await rm(dir, { recursive: true, force: true });
  }
}

async function assertFiles(dir: string, files: Map<string, string>, what: string): Promise<void> {
  for (const [name, sum] of files) assert.equal(sha256(await readFile(join(dir, name))), sum, `${what}: ${name} reads back`);
}

/**
 * The whole case on an attached SR: returns the VDI and its snapshot (both
 * detached) for the caller to delete.
 */
export async function fileSystemOverKernelNbd(t: SrUnderTest, size = 64 * MiB): Promise<{ vdi: string; snapshot: string }> {
  const vdi = ((await t.ok('vdi_create', { args: createArgs(size, 'ext4 over /dev/nbd') })) as { uuid: string }).uuid;
  const files = new Map<string, string>();

  // 1. attach, activate, mkfs, mount, write, umount, fsck; deactivate, detach.
  let a = await attach(t, vdi, true);
  await activate(t, vdi, a, true, size);
  await activate(t, vdi, a, true, size); // activated again: the connection stands
  const smlog = await readFile(join(t.smRoot, 'var', 'log', 'SMlog'), 'utf8');
  assert.ok(smlog.includes(`VDI ${vdi}: ${a.device} connected to`), 'SMlog says which device was connected');
  await runTool('mkfs.ext4', ['-q', '-F', a.device], { timeoutMs: 300_000 });
  await withMount(a.device, false, async (dir) => {
    for (const [name, bytes] of [['a.bin', MiB], ['b.bin', 300 * 1024 + 7], ['c.bin', 5 * MiB + 4096]] as const) {
      const data = randomBytes(bytes);
      await writeFile(join(dir, name), data);
      files.set(name, sha256(data));
    }
  });
  await fsckClean(a.device, 'after the first writes');
  await release(t, vdi, a);

  // 2. attach again (maybe another device), files read back; snapshot while mounted and being written.
  a = await attach(t, vdi, true);
  await activate(t, vdi, a, true, size);
  let snapshot = '';
  const atSnapshot = new Map(files);
  await withMount(a.device, false, async (dir) => {
    await assertFiles(dir, files, 'after detach and a new attach');
    const d = randomBytes(2 * MiB + 123);
    await writeFile(join(dir, 'd.bin'), d);
    files.set('d.bin', sha256(d));
    atSnapshot.set('d.bin', sha256(d));
    // A writer that runs through the snapshot: frozen with the file system, then carries on.
    const e = randomBytes(8 * MiB);
    const source = join(dir, '..', `${basename(dir)}-e.src`);
    await writeFile(source, e);
    const writer = runTool('dd', [`if=${source}`, `of=${join(dir, 'e.bin')}`, 'bs=64k', 'conv=fsync'], { timeoutMs: 300_000 });
    // As a quiesced snapshot: fsfreeze flushes the journal and marks the file system clean, so the snapshot mounts as it is.
    await runTool('fsfreeze', ['--freeze', dir], { timeoutMs: 60_000 });
    try {
      snapshot = ((await t.ok('vdi_snapshot', vdiArgs(vdi))) as { uuid: string }).uuid;
    } finally {
      await runTool('fsfreeze', ['--unfreeze', dir], { timeoutMs: 60_000 });
    }
    await writer;
    await rm(source);
    files.set('e.bin', sha256(e));
    await assertFiles(dir, files, 'after the snapshot, on the VDI');
  });
  await fsckClean(a.device, 'after the snapshot');
  // Mounted again: the last close of the device dropped its page cache, so this reads through the datapath.
  await withMount(a.device, true, (dir) => assertFiles(dir, files, 'mounted again after the snapshot'));
  await release(t, vdi, a);

  // 3. the snapshot, attached read-only: mounts read-only, holds what was there at the freeze.
  const s = await attach(t, snapshot, false);
  await activate(t, snapshot, s, false, size);
  await withMount(s.device, true, (dir) => assertFiles(dir, atSnapshot, 'on the snapshot'));
  await fsckClean(s.device, 'the snapshot');
  await release(t, snapshot, s);
  return { vdi, snapshot };
}
