// (e) The NFS SR end to end against the kernel nfsd in the guest: the whole
// lifecycle through the NFSSR executable exactly as a toolstack calls it
// (`drivers/NFSSR '<methodCall>'`), its failure paths, and its latencies beside
// a File SR's. Data is checked against an in-memory model with `sm-vhd`.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { appendFileSync, existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as nfs from '../../lib/os/nfs.js';
import { MiB, SparseDisk, pattern } from '../helpers/model.js';
import { FILE_SR, REPO, SM_GC, SM_VHD, createArgs, node, run } from '../helpers/sm.js';
import { call, fault, ok } from './support/driver-call.js';
import { OUT, requireGuest } from './support/guest.js';
import { fileSystemOverKernelNbd } from './support/kernel-nbd.js';
import { relinkUnderActiveLeaf, seedScenarioLive, type LiveSr } from './support/live-gc.js';
import { NfsServer } from './support/nfs-server.js';

requireGuest();
const NFS_SR = join(REPO, 'drivers', 'NFSSR');
const SERVER = '127.0.0.1';
// fsid=0: also the NFSv4 pseudo root, so over v4 this export is `/`
const EXPORT = '/srv/smvm-nfssr';
const OTHER = '/srv/smvm-nfssr-other';
const V3 = { server: SERVER, serverpath: EXPORT };
const V41 = { server: SERVER, serverpath: '/', nfsversion: '4.1' };

const mountEntry = async (mountpoint: string) => nfs.parseProcMounts(await readFile('/proc/mounts', 'utf8')).find((m) => m.mountpoint === mountpoint);

/** One timing line, beside the tier's own `VM STEP` lines. */
function step(name: string, ms: number[]): void {
  const sorted = [...ms].sort((a, b) => a - b);
  const med = sorted[Math.floor(sorted.length / 2)]!;
  const line = `VM STEP ${name} median=${(med / 1000).toFixed(2)}s min=${(sorted[0]! / 1000).toFixed(2)}s max=${(sorted.at(-1)! / 1000).toFixed(2)}s n=${ms.length}\n`;
  process.stdout.write(line);
  appendFileSync(join(OUT, 'timings.txt'), line);
}

describe('nfs-sr', { timeout: 1_200_000 }, () => {
  let server: NfsServer | undefined;

  before(async () => {
    server = await NfsServer.start([
      { path: EXPORT, clients: ['127.0.0.1'], fsid: 0 },
      { path: OTHER, clients: ['127.0.0.2', '127.0.0.3'], fsid: 7 },
    ]);
  });

  after(async () => {
    await server?.stop();
  });

describe('lifecycle', () => {
  let root = '';
  let env: NodeJS.ProcessEnv = {};
  const sr = randomUUID();
  let mount = '';
  const models = new Map<string, SparseDisk>();
  const img = (u: string) => join(mount, `${u}.vhd`);
  const nfsCall = (verb: string, dc: Record<string, string>, extra: Record<string, unknown> = {}, s = sr) => call(NFS_SR, env, s, verb, dc, extra);
  const vdi = (u: string) => ({ vdi_uuid: u, vdi_location: u, vdi_ref: `OpaqueRef:vdi-${u.slice(0, 8)}` });
  let V = '';
  let S = '';
  let C = '';

  async function write(u: string, offset: number, data: Buffer): Promise<void> {
    const file = join(root, 'data.bin');
    await writeFile(file, data);
    const r = await node(SM_VHD, ['write', '-n', img(u), '-i', file, '-o', String(offset)], { env });
    assert.equal(r.code, 0, `sm-vhd write ${u}: ${r.stderr}`);
    models.get(u)!.write(offset, data);
  }

  async function compare(u: string, what: string): Promise<void> {
    const raw = join(root, `${u}.raw`);
    const r = await node(SM_VHD, ['export', '-n', img(u), '-o', raw], { env });
    assert.equal(r.code, 0, `sm-vhd export ${u}: ${r.stderr}`);
    const bytes = readFileSync(raw);
    await rm(raw);
    assert.equal(bytes.length, models.get(u)!.size, `${what}: size of ${u}`);
    assert.ok(bytes.equals(models.get(u)!.raw()), `${what}: ${u} reads as the model`);
    const c = await node(SM_VHD, ['check', '-n', img(u), '-p'], { env });
    assert.equal(c.code, 0, `sm-vhd check -p ${u}: ${c.stdout}${c.stderr}`);
  }

  before(async () => {
    root = await mkdtemp('/tmp/nfs-sr-root-');
    env = { ...process.env, SM_ROOT: root, SM_GC: 'off', ORIGINATOR: 'SM' };
    mount = join(root, 'run', 'sr-mount', sr);
  });

  after(async () => {
    const mounts = nfs.parseProcMounts(await readFile('/proc/mounts', 'utf8')).filter((m) => m.mountpoint.startsWith(root || '/nonexistent'));
    for (const m of mounts) await nfs.umountNfs(m.mountpoint, { lazy: true }).catch(() => {});
    await copyFile(join(root, 'var', 'log', 'SMlog'), join(OUT, 'nfs-sr-SMlog')).catch(() => {});
  });

  it('sr_probe without serverpath: fault 101, the exports on stderr', async () => {
    const r = await nfsCall('sr_probe', { server: SERVER });
    fault(r, 101, 'sr_probe');
    assert.match(r.stderr, /<nfs-exports>/);
    const exports = [...r.stderr.matchAll(/<Export>\s*<Target>([^<]*)<\/Target>\s*<Path>([^<]*)<\/Path>\s*<Accesslist>([^<]*)<\/Accesslist>\s*<\/Export>/g)].map((m) => [m[1], m[2], m[3]!.split(',').sort().join(',')]);
    assert.deepEqual(exports.sort(), [
      [SERVER, EXPORT, '127.0.0.1'],
      [SERVER, OTHER, '127.0.0.2,127.0.0.3'],
    ]);
  });

  it('sr_create makes <serverpath>/<sr> on the export, leaves nothing mounted', async () => {
    assert.equal(ok(await nfsCall('sr_create', V3, { args: ['0'], sr_sm_config: { name_label: 'nfs-sr vmtest' } }), 'sr_create'), null);
    assert.ok(statSync(join(EXPORT, sr)).isDirectory());
    assert.equal(JSON.parse(readFileSync(join(EXPORT, sr, '.sm', 'sr.json'), 'utf8')).uuid, sr);
    const left = nfs.parseProcMounts(await readFile('/proc/mounts', 'utf8')).filter((m) => m.mountpoint.startsWith(root));
    assert.deepEqual(left, [], 'no mount left behind');
    // a second create of the same SR is refused
    fault(await nfsCall('sr_create', V3, { args: ['0'] }), 42, 'sr_create again');
  });

  it('sr_probe with serverpath lists the SR', async () => {
    const xml = ok(await nfsCall('sr_probe', V3), 'sr_probe') as string;
    assert.match(xml, /<SRlist>/);
    assert.ok(xml.includes(`<UUID>${sr}</UUID>`), xml);
  });

  it('sr_attach mounts <serverpath>/<sr> at run/sr-mount/<sr> with the SR options (v3)', async () => {
    assert.equal(ok(await nfsCall('sr_attach', V3), 'sr_attach'), null);
    const e = await mountEntry(mount);
    assert.ok(e, `${mount} is mounted`);
    assert.equal(e.fstype, 'nfs');
    assert.equal(e.source, `${SERVER}:${EXPORT}/${sr}`);
    process.stdout.write(`nfs-sr: /proc/mounts options: ${e.options.join(',')}\n`);
    for (const o of ['vers=3', 'soft', 'proto=tcp', 'acdirmin=0', 'acdirmax=0', 'timeo=200', 'retrans=4']) assert.ok(e.options.includes(o), `${o} in ${e.options.join(',')}`);
    assert.ok(existsSync(join(root, 'run', 'sm', 'sr', `${sr}.json`)), 'attach record');
  });

  it('vdi_create, write, vdi_snapshot, vdi_clone, more writes: data as the model', async () => {
    const v = ok(await nfsCall('vdi_create', {}, { args: createArgs(16 * MiB, 'nfs disk'), vdi_type: 'user' }), 'vdi_create') as { uuid: string; location: string };
    V = v.uuid;
    assert.ok(existsSync(join(EXPORT, sr, `${V}.vhd`)), 'the image is on the server');
    models.set(V, new SparseDisk(16 * MiB));
    await write(V, 1000, pattern(1, 3 * MiB + 777));
    await compare(V, 'after the first write');
    S = (ok(await nfsCall('vdi_snapshot', {}, vdi(V)), 'vdi_snapshot') as { uuid: string }).uuid;
    models.set(S, models.get(V)!.copy());
    C = (ok(await nfsCall('vdi_clone', {}, vdi(V)), 'vdi_clone') as { uuid: string }).uuid;
    models.set(C, models.get(V)!.copy());
    assert.equal(new Set([V, S, C]).size, 3);
    await write(V, 2 * MiB - 512, pattern(2, 2 * MiB));
    await write(C, 9 * MiB, pattern(3, 5 * MiB + 3));
    await write(S, 12 * MiB, pattern(4, MiB)); // a snapshot is a writable leaf too
    for (const u of [V, S, C]) await compare(u, 'after snapshot, clone and writes');
  });

  it('vdi_delete, sr_scan, GC (sm-gc -g): the others read as before', async () => {
    assert.equal(ok(await nfsCall('vdi_delete', {}, vdi(C)), 'vdi_delete'), null);
    models.delete(C);
    assert.ok(!existsSync(img(C)));
    assert.equal(ok(await nfsCall('sr_scan', V3), 'sr_scan'), null);
    const before = readdirSync(mount).filter((n) => n.endsWith('.vhd')).length;
    const g = await node(SM_GC, ['-u', sr, '-g'], { env, timeoutMs: 300_000 });
    assert.equal(g.code, 0, `sm-gc -g: ${g.stderr}`);
    const afterGc = readdirSync(mount).filter((n) => n.endsWith('.vhd')).length;
    process.stdout.write(`nfs-sr: images before GC ${before}, after ${afterGc}\n`);
    assert.ok(afterGc < before, 'the GC removed the garbage/coalesced the chain');
    for (const u of [V, S]) await compare(u, 'after the GC');
  });

  /** This SR as the live GC scenarios reach it (support/live-gc.ts). */
  const liveSr = (): LiveSr => ({
    sr,
    smRoot: root,
    ok: async (verb, extra) => ok(await nfsCall(verb, V3, extra), verb),
    gc: async () => {
      const g = await node(SM_GC, ['-u', sr, '-g'], { env, timeoutMs: 300_000 });
      assert.equal(g.code, 0, `sm-gc -g: ${g.stderr}`);
    },
    withImages: async (fn) => fn(new Map(readdirSync(mount).filter((n) => n.endsWith('.vhd')).map((n) => [n.slice(0, -'.vhd'.length), join(mount, n)]))),
  });

  it('live GC, the seed scenario: an active VDI written through NBD, its only snapshot deleted, sm-gc -g: one image, never deactivated, exact bytes', async () => {
    await seedScenarioLive(liveSr());
  });

  it('live GC, a hidden node under an active leaf: coalesced and relinked under the running datapath; then leaf-coalesced live', async () => {
    await relinkUnderActiveLeaf(liveSr());
  });

  it('ext4 on the /dev/nbdN of vdi_attach (an SR of its own on the same export), through detach/attach and a snapshot while mounted', async () => {
    const other = randomUUID();
    ok(await nfsCall('sr_create', V3, { args: ['0'] }, other), 'sr_create');
    ok(await nfsCall('sr_attach', V3, {}, other), 'sr_attach');
    const { vdi: v, snapshot } = await fileSystemOverKernelNbd({ sr: other, smRoot: root, ok: async (verb, extra) => ok(await nfsCall(verb, V3, extra, other), verb) });
    for (const u of [snapshot, v]) ok(await nfsCall('vdi_delete', V3, vdi(u), other), 'vdi_delete');
    ok(await nfsCall('sr_detach', V3, {}, other), 'sr_detach');
    ok(await nfsCall('sr_delete', V3, {}, other), 'sr_delete');
    assert.ok(!existsSync(join(EXPORT, other)), 'the SR is gone from the export');
  });

  it('sr_detach unmounts; sr_attach again (v3) reads the same data', async () => {
    assert.equal(ok(await nfsCall('sr_detach', V3), 'sr_detach'), null);
    assert.equal(await mountEntry(mount), undefined, 'unmounted');
    assert.ok(!(await nfs.isNfsMounted(mount)));
    assert.ok(existsSync(join(EXPORT, sr, `${V}.vhd`)), 'the data stays on the server');
    assert.equal(ok(await nfsCall('sr_attach', V3), 'sr_attach'), null);
    for (const u of [V, S]) await compare(u, 'after detach/attach');
    assert.equal(ok(await nfsCall('sr_detach', V3), 'sr_detach'), null);
  });

  it('sr_attach with nfsversion 4.1 (serverpath in the v4 pseudo root), write, scan, detach', async () => {
    assert.equal(ok(await nfsCall('sr_attach', V41), 'sr_attach 4.1'), null);
    const e = await mountEntry(mount);
    assert.ok(e, 'mounted');
    assert.equal(e.fstype, 'nfs4');
    process.stdout.write(`nfs-sr: /proc/mounts options (4.1): ${e.options.join(',')}\n`);
    for (const o of ['vers=4.1', 'soft', 'proto=tcp', 'acdirmin=0', 'acdirmax=0', 'timeo=200', 'retrans=4']) assert.ok(e.options.includes(o), `${o} in ${e.options.join(',')}`);
    for (const u of [V, S]) await compare(u, 'over 4.1');
    await write(V, 5 * MiB, pattern(5, MiB + 1));
    await compare(V, 'after a write over 4.1');
    assert.equal(ok(await nfsCall('sr_scan', V41), 'sr_scan 4.1'), null);
    assert.equal(ok(await nfsCall('sr_detach', V41), 'sr_detach 4.1'), null);
    assert.equal(await mountEntry(mount), undefined, 'unmounted');
  });

  it('delete everything, sr_delete removes <serverpath>/<sr> from the export', async () => {
    assert.equal(ok(await nfsCall('sr_attach', V3), 'sr_attach'), null);
    await compare(V, 'the 4.1 write over v3');
    fault(await nfsCall('sr_delete', V3), 39, 'sr_delete of a non-empty SR');
    for (const u of [V, S]) assert.equal(ok(await nfsCall('vdi_delete', {}, vdi(u)), 'vdi_delete'), null);
    assert.equal(ok(await nfsCall('sr_delete', V3), 'sr_delete'), null);
    assert.ok(!existsSync(join(EXPORT, sr)), 'the SR directory is gone from the export');
    assert.equal(await mountEntry(mount), undefined, 'nothing mounted');
    assert.ok(!existsSync(join(root, 'run', 'sm', 'sr', `${sr}.json`)), 'no attach record');
    const left = nfs.parseProcMounts(await readFile('/proc/mounts', 'utf8')).filter((m) => m.mountpoint.startsWith(root));
    assert.deepEqual(left, []);
  });

  it('an unreachable server: 108, within seconds', async () => {
    const other = randomUUID();
    // nfsd listens on 127.0.0.1 only: 127.0.0.9 refuses NFS. Each call answers in a
    // driver call's time (seconds under software emulation, more on a loaded host),
    // not in the minutes NFS's own retries would take.
    const timedCall = async (what: string, fn: () => Promise<unknown>) => {
      const start = Date.now();
      await fn();
      assert.ok(Date.now() - start < 20_000, `${what} took ${Date.now() - start} ms`);
    };
    await timedCall('sr_create', async () => fault(await nfsCall('sr_create', { server: '127.0.0.9', serverpath: EXPORT }, { args: ['0'] }, other), 108, 'sr_create'));
    await timedCall('sr_attach', async () => fault(await nfsCall('sr_attach', { server: '127.0.0.9', serverpath: EXPORT }, {}, other), 108, 'sr_attach'));
    await timedCall('sr_probe', async () => fault(await nfsCall('sr_probe', { server: '127.0.0.9' }, {}, other), 108, 'sr_probe'));
    assert.ok(!existsSync(join(EXPORT, other)));
  });

  it('a serverpath the server does not export: 73; attaching an SR that is not there: 73', async () => {
    const other = randomUUID();
    const f = fault(await nfsCall('sr_create', { server: SERVER, serverpath: '/srv/not-exported' }, { args: ['0'] }, other), 73, 'sr_create');
    process.stdout.write(`nfs-sr: not exported: ${f}\n`);
    const g = fault(await nfsCall('sr_attach', V3, {}, other), 73, 'sr_attach of a missing SR');
    process.stdout.write(`nfs-sr: missing SR dir: ${g}\n`);
    const left = nfs.parseProcMounts(await readFile('/proc/mounts', 'utf8')).filter((m) => m.mountpoint.startsWith(root));
    assert.deepEqual(left, []);
  });

  it('a bad nfsversion: 72; shell metacharacters in server: refused, nothing run', async () => {
    const other = randomUUID();
    fault(await nfsCall('sr_create', { ...V3, nfsversion: '2' }, { args: ['0'] }, other), 72, 'sr_create vers 2');
    fault(await nfsCall('sr_attach', { ...V3, nfsversion: '5' }, {}, other), 72, 'sr_attach vers 5');
    await rm('/tmp/x', { force: true });
    for (const verb of ['sr_create', 'sr_attach', 'sr_probe']) {
      const r = await nfsCall(verb, { server: '127.0.0.1;touch /tmp/x', serverpath: EXPORT }, { args: ['0'] }, other);
      assert.equal(r.response.kind, 'fault', `${verb} refused`);
      const f = r.response as { faultCode: number; faultString: string };
      assert.ok([101, 102].includes(f.faultCode), `${verb}: ${f.faultCode} ${f.faultString}`);
    }
    const r = await nfsCall('sr_attach', { ...V3, options: 'noatime;touch /tmp/x' }, {}, other);
    assert.equal(r.response.kind, 'fault', 'options with metacharacters refused');
    const r2 = await nfsCall('sr_attach', { server: SERVER, serverpath: `${EXPORT};touch /tmp/x` }, {}, other);
    assert.equal(r2.response.kind, 'fault', 'serverpath with metacharacters refused');
    assert.ok(!existsSync('/tmp/x'), '/tmp/x was not created');
    assert.ok(!existsSync(join(EXPORT, other)));
  });
});

describe('latency', () => {
  let root = '';
  let env: NodeJS.ProcessEnv = {};
  const N = 50;

  before(async () => {
    root = await mkdtemp('/tmp/nfs-sr-bench-');
    env = { ...process.env, SM_ROOT: root, SM_GC: 'off', ORIGINATOR: 'SM' };
  });

  after(async () => {
    const mounts = nfs.parseProcMounts(await readFile('/proc/mounts', 'utf8')).filter((m) => m.mountpoint.startsWith(root || '/nonexistent'));
    for (const m of mounts) await nfs.umountNfs(m.mountpoint, { lazy: true }).catch(() => {});
  });

  for (const kind of ['file', 'nfs'] as const) {
    it(`${kind} SR: vdi_create, vdi_snapshot, sr_scan with ${N} VDIs`, async () => {
      const sr = randomUUID();
      const driver = kind === 'nfs' ? NFS_SR : FILE_SR;
      const dc: Record<string, string> = kind === 'nfs' ? V3 : { location: join(root, 'file-sr') };
      const c = (verb: string, extra: Record<string, unknown> = {}) => call(driver, env, sr, verb, dc, extra);
      ok(await c('sr_create', { args: ['0'] }), 'sr_create');
      ok(await c('sr_attach'), 'sr_attach');
      const creates: number[] = [];
      const vdis: string[] = [];
      for (let i = 0; i < 5; i++) {
        const r = await c('vdi_create', { args: createArgs(64 * MiB, `bench ${i}`), vdi_type: 'user' });
        vdis.push((ok(r, 'vdi_create') as { uuid: string }).uuid);
        creates.push(r.ms);
      }
      step(`${kind}-sr vdi_create`, creates);
      const snaps: number[] = [];
      for (let i = 0; i < 5; i++) {
        const r = await c('vdi_snapshot', { vdi_uuid: vdis[i], vdi_location: vdis[i] });
        vdis.push((ok(r, 'vdi_snapshot') as { uuid: string }).uuid);
        snaps.push(r.ms);
      }
      step(`${kind}-sr vdi_snapshot`, snaps);
      // the rest in one --json batch (one process), to reach N VDIs quickly
      const batch = Array.from({ length: N - vdis.length }, (_, i) => ({
        jsonrpc: '2.0',
        id: i + 1,
        method: 'vdi_create',
        params: { host_ref: 'OpaqueRef:h', command: 'vdi_create', sr_uuid: sr, args: createArgs(64 * MiB, `bulk ${i}`), vdi_type: 'user', device_config: { SRmaster: 'true', ...dc } },
      }));
      const b = await run(driver, ['--json'], { env, input: JSON.stringify(batch), timeoutMs: 600_000 });
      assert.equal(b.code, 0, b.stderr);
      const replies = JSON.parse(b.stdout) as Array<{ error?: unknown }>;
      assert.deepEqual(replies.filter((x) => x.error), []);
      const scans: number[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await c('sr_scan');
        ok(r, 'sr_scan');
        scans.push(r.ms);
      }
      step(`${kind}-sr sr_scan(${N} VDIs, ${N + 5} images)`, scans);
      ok(await c('sr_detach'), 'sr_detach');
    });
  }
});
});
