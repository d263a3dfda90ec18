// (f) The Debian package on a fresh guest (its root overlay is new each boot):
// `npm run package` builds the .deb, `dpkg -i` installs it with its Depends
// met by the guest's own packages (node from the nodejs package), and a File
// SR lives its whole life through /opt/xensource/sm/FileSR called exactly as
// xapi calls it: one XML-RPC methodCall on argv, PATH and ORIGINATOR=SM as the
// only environment, so no SM_ROOT: every path is the default one. Then
// `dpkg --purge` takes every file of the package away again.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, lstatSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MiB } from '../helpers/model.js';
import { REPO, createArgs, run, type RunResult } from '../helpers/sm.js';
import { call as callDriver, ok } from './support/driver-call.js';
import { OUT, requireGuest } from './support/guest.js';

requireGuest();
const DRIVER = '/opt/xensource/sm/FileSR';
/** The environment xapi gives a driver (sm_exec.ml: PATH plus ORIGINATOR=SM); no SM_ROOT, no SM_GC. */
const XAPI_ENV = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', ORIGINATOR: 'SM' };
const SMLOG = '/var/log/SMlog';

/** The paths the package installs (dpkg -L), read while it is installed. */
let installed: string[] = [];
/** Paths of the package that the guest had before (directories shared with others, e.g. /usr/bin). */
let preexisting = new Set<string>();

/** Exists, a dangling link included. */
function present(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

async function tool(file: string, args: string[], what: string, env: NodeJS.ProcessEnv = process.env): Promise<RunResult> {
  const r = await run(file, args, { env, timeoutMs: 300_000 });
  assert.equal(r.code, 0, `${what}: exit ${r.code}\n${r.stdout}${r.stderr}`);
  return r;
}

describe('package-install', { timeout: 900_000 }, () => {
  const sr = randomUUID();
  const location = `/srv/pkg-filesr-${sr.slice(0, 8)}`;
  let scratch = '';
  let deb = '';
  let smlogBefore = 0;

  /** One verb through the installed driver, as xapi runs it. */
  const call = async (verb: string, extra: Record<string, unknown> = {}) => ok(await callDriver(DRIVER, XAPI_ENV, sr, verb, { location }, extra), verb);
  const vdi = (u: string, args: string[] = []) => ({ vdi_uuid: u, vdi_location: u, vdi_ref: `OpaqueRef:vdi-${u.slice(0, 8)}`, args });

  before(async () => {
    scratch = await mkdtemp('/tmp/pkg-install-');
    smlogBefore = existsSync(SMLOG) ? statSync(SMLOG).size : 0;
  });

  after(async () => {
    // Whatever happened, the guest's SMlog lines of this SR are kept with the results.
    if (existsSync(SMLOG)) {
      const lines = readFileSync(SMLOG, 'utf8').slice(smlogBefore);
      await writeFile(join(OUT, 'package-install-SMlog'), lines).catch(() => undefined);
    }
    await run('dpkg', ['--purge', 'xcp-sm'], { timeoutMs: 120_000 }).catch(() => undefined);
    await rm(scratch, { recursive: true, force: true });
  });

  it('npm run package builds the .deb; dpkg -i installs it with its Depends met (node from the nodejs package)', async () => {
    assert.equal((await run('dpkg', ['-s', 'xcp-sm'])).code, 1, 'not installed on the fresh guest');
    deb = (await tool(process.execPath, [join(REPO, 'drivers', 'package-deb.mjs'), '--out', scratch], 'npm run package')).stdout.trim();
    const depends = (await tool('dpkg-deb', ['-f', deb, 'Depends'], 'dpkg-deb -f')).stdout;
    assert.match(depends, /nodejs \(>= 20\)/);
    const contents = (await tool('dpkg-deb', ['--contents', deb], 'dpkg-deb --contents')).stdout.trim().split('\n');
    const paths = contents.map((l) => /\.(\/\S*?)\/?(?: -> \S+)?$/.exec(l)?.[1]).filter((p): p is string => !!p && p !== '/');
    preexisting = new Set(paths.filter(present));
    for (const p of preexisting) assert.ok(statSync(p).isDirectory(), `${p} was on the fresh guest before the package: only shared directories may be`);
    // The drivers start with `#!/usr/bin/env node`: with xapi's PATH that is /usr/bin/node, the nodejs package's.
    const node = await tool('dpkg', ['-S', '/usr/bin/node'], 'dpkg -S /usr/bin/node');
    assert.match(node.stdout, /^nodejs: \/usr\/bin\/node$/m);
    const version = (await tool('/usr/bin/node', ['--version'], 'node --version')).stdout.trim();
    assert.ok(Number(/^v(\d+)\./.exec(version)?.[1]) >= 20, `node ${version} >= 20`);
    await tool('dpkg', ['-i', deb], 'dpkg -i'); // no --force-depends: every Depends is satisfied
    assert.match((await tool('dpkg', ['-s', 'xcp-sm'], 'dpkg -s')).stdout, /^Status: install ok installed$/m);
    installed = (await tool('dpkg', ['-L', 'xcp-sm'], 'dpkg -L')).stdout.trim().split('\n').filter((p) => p !== '/.');
    for (const p of [DRIVER, '/opt/xensource/sm/NFSSR', '/opt/xensource/sm/LVMoISCSISR', '/etc/xapi.d/plugins/tapdisk-pause', '/usr/bin/sm', '/usr/bin/sm-gc', '/usr/bin/sm-vhd']) {
      assert.ok(installed.includes(p), `${p} is the package's`);
      assert.ok(statSync(p).mode & 0o111, `${p} resolves to an executable`);
    }
  });

  it('systemd units present, naming what the package installed', () => {
    const serve = readFileSync('/lib/systemd/system/sm-serve@.service', 'utf8');
    const smDir = /^Environment=SM_DIR=(\S+)$/m.exec(serve)?.[1];
    assert.equal(smDir, '/usr/lib/xcp-sm');
    assert.ok(statSync(`${smDir}/drivers/FileSR`).isFile(), 'sm-serve@FileSR runs ${SM_DIR}/drivers/FileSR');
    const gc = readFileSync('/lib/systemd/system/SMGC@.service', 'utf8');
    const gcBin = /^Environment=SM_GC_BIN=(\S+)$/m.exec(gc)?.[1];
    assert.ok(gcBin && statSync(gcBin).isFile(), `SMGC@ runs ${gcBin}`);
    assert.ok(statSync('/etc/logrotate.d/SMlog').isFile());
  });

  it('a File SR lifecycle through /opt/xensource/sm/FileSR with default paths: data written over NBD is in the snapshot', async () => {
    assert.equal(await call('sr_create', { args: ['0'] }), null);
    assert.ok(existsSync(join(location, '.sm', 'sr.json')), 'the SR metadata in device_config.location');
    assert.equal(await call('sr_attach'), null);
    const mount = `/run/sr-mount/${sr}`; // /var/run is a link to /run
    assert.ok(lstatSync(mount).isSymbolicLink(), `${mount} links to the SR`);
    assert.ok(existsSync(`/run/sm/sr/${sr}.json`), 'the attach record where the GC looks for it');
    assert.ok(existsSync(`/var/lock/sm/${sr}`), 'the SR lock directory');

    const V = ((await call('vdi_create', { args: createArgs(16 * MiB, 'pkg disk'), vdi_type: 'user' })) as { uuid: string }).uuid;
    assert.ok(existsSync(join(mount, `${V}.vhd`)));
    const att = (await call('vdi_attach', vdi(V, ['true']))) as { params: string; params_nbd: string };
    const socket = `/run/blktap-control/nbd/${sr}/${V}`;
    assert.equal(att.params_nbd, `nbd:unix:${socket}:exportname=${V}`);
    assert.equal(await call('vdi_activate', vdi(V, ['true'])), null);
    assert.ok(statSync(socket).isSocket(), 'the VDI is served at the default socket');
    // Written through the datapath at params_nbd (as qemu would), never through the image file.
    await tool('qemu-io', ['-f', 'raw', att.params_nbd, '-c', `write -P 0x5a ${MiB} ${2 * MiB}`, '-c', 'flush'], 'qemu-io write over NBD');
    assert.equal(await call('vdi_deactivate', vdi(V)), null);
    assert.equal(existsSync(socket), false, 'not served after vdi_deactivate');
    assert.equal(await call('vdi_detach', vdi(V)), null);

    const S = ((await call('vdi_snapshot', vdi(V))) as { uuid: string }).uuid;
    assert.notEqual(S, V);
    const raw = join(scratch, 'snap.raw');
    await tool('/usr/bin/sm-vhd', ['export', '-n', join(mount, `${S}.vhd`), '-o', raw], 'sm-vhd export of the snapshot');
    const bytes = readFileSync(raw);
    assert.equal(bytes.length, 16 * MiB);
    assert.ok(bytes.subarray(MiB, 3 * MiB).equals(Buffer.alloc(2 * MiB, 0x5a)), 'the snapshot holds what was written over NBD');
    assert.ok(bytes.subarray(0, MiB).equals(Buffer.alloc(MiB)) && bytes.subarray(3 * MiB).equals(Buffer.alloc(13 * MiB)), 'and nothing else');
    const tree = await tool('/usr/bin/sm', ['tree', sr], 'sm tree', XAPI_ENV);
    assert.ok(tree.stdout.includes(V.slice(0, 8)), tree.stdout);

    assert.equal(await call('vdi_delete', vdi(S)), null);
    assert.equal(await call('vdi_delete', vdi(V)), null);
    assert.equal(await call('sr_scan'), null);
    assert.equal(await call('sr_detach'), null);
    assert.equal(existsSync(mount), false, 'sr_detach removed the mount link');
    assert.equal(await call('sr_delete'), null);
    assert.equal(existsSync(location), false, 'sr_delete removed the SR directory');

    const log = readFileSync(SMLOG, 'utf8').slice(smlogBefore);
    for (const verb of ['sr_create', 'sr_attach', 'vdi_create', 'vdi_activate', 'vdi_snapshot', 'sr_delete']) {
      assert.match(log, new RegExp(`^\\w{3} [ \\d]\\d \\d\\d:\\d\\d:\\d\\d \\S+ SM: \\[\\d+\\] ${verb} `, 'm'), `SMlog at the default path has ${verb}`);
    }
    assert.doesNotMatch(log, /session-1/, 'the session is masked in SMlog');
  });

  it('dpkg --purge leaves no file of the package, no record of it and no process of ours', async () => {
    assert.ok(installed.length > 100, `${installed.length} paths installed`);
    await tool('dpkg', ['--purge', 'xcp-sm'], 'dpkg --purge');
    assert.equal((await run('dpkg', ['-s', 'xcp-sm'])).code, 1, 'no longer known to dpkg');
    const ours = installed.filter((p) => !preexisting.has(p));
    assert.ok(ours.includes(DRIVER) && ours.includes('/usr/lib/xcp-sm'), 'the paths the package brought are known');
    assert.deepEqual(ours.filter(present), [], 'every path the package brought is gone (its directories too, now empty)');
    assert.deepEqual(readdirSync('/var/lib/dpkg/info').filter((f) => f.startsWith('xcp-sm.')), [], "dpkg's info files are gone");
    const ps = await tool('ps', ['-eo', 'pid,args'], 'ps');
    // The package's processes run from its own paths (other suites' datapaths run from the checkout).
    assert.doesNotMatch(ps.stdout, /\/usr\/lib\/xcp-sm|\/opt\/xensource\/sm\/|\/usr\/bin\/sm-/, 'no datapath or GC of the package runs');
    assert.equal(existsSync(`/run/blktap-control/nbd/${sr}`) && readdirSync(`/run/blktap-control/nbd/${sr}`).length > 0, false, 'no VDI socket left');
  });
});
