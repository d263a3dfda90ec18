// `npm run package`: the Debian package built by the project's own script,
// inspected with dpkg-deb, extracted into a scratch root and run from there:
// the FileSR driver at /opt/xensource/sm with real verbs, the operator
// commands in /usr/bin, the host plugin in /etc/xapi.d/plugins.
import fs from 'node:fs';
import { createHash, randomUUID } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { encodeMethodCall, parseMethodResponse } from '../../lib/smapi/index.js';
import { createArgs, REPO, run } from '../helpers/sm.js';

const MiB = 1024 * 1024;
const version = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')).version as string;

interface Built {
  deb: string;
  /** `dpkg-deb --contents` lines by path (leading "./" dropped, directories end in "/"). */
  entries: Map<string, { mode: string; owner: string; target?: string }>;
  /** Where `dpkg-deb -x` put it. */
  root: string;
}

let built: Promise<Built> | undefined;
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'sm-package-'));
test.after.always(() => fs.rmSync(scratch, { recursive: true, force: true }));

/** Builds, lists and extracts the package once for every test of this file. */
function buildOnce(): Promise<Built> {
  built ??= (async () => {
    const r = await run(process.execPath, [path.join(REPO, 'drivers', 'package-deb.mjs'), '--out', path.join(scratch, 'out')], { timeoutMs: 300_000 });
    if (r.code !== 0) throw new Error(`package-deb: ${r.stderr}`);
    const deb = r.stdout.trim();
    const list = await run('dpkg-deb', ['--contents', deb]);
    if (list.code !== 0) throw new Error(list.stderr);
    const entries = new Map<string, { mode: string; owner: string; target?: string }>();
    for (const line of list.stdout.trim().split('\n')) {
      const m = /^(\S+) (\S+)\s+\d+ \S+ \S+ \.\/(\S*)(?: -> (\S+))?$/.exec(line);
      if (!m) throw new Error(`unexpected dpkg-deb line: ${line}`);
      entries.set(m[3], { mode: m[1], owner: m[2], ...(m[4] ? { target: m[4] } : {}) });
    }
    const root = path.join(scratch, 'root');
    const x = await run('dpkg-deb', ['-x', deb, root]);
    if (x.code !== 0) throw new Error(x.stderr);
    return { deb, entries, root };
  })();
  return built;
}

test('control fields: name, version, architecture, maintainer, what the drivers run, a description', async (t) => {
  const { deb } = await buildOnce();
  // A binary of this machine's architecture is in the package when the build compiled one.
  const arch = fs.existsSync(path.join(REPO, 'dist', 'native', 'copy-ranges')) ? (await run('dpkg', ['--print-architecture'])).stdout.trim() : 'all';
  t.is(path.basename(deb), `xcp-sm_${version}_${arch}.deb`);
  const field = async (name: string) => (await run('dpkg-deb', ['-f', deb, name])).stdout.trim();
  t.is(await field('Package'), 'xcp-sm');
  t.is(await field('Version'), version);
  t.is(await field('Architecture'), arch);
  t.regex(await field('Maintainer'), /^.+ <[^@\s]+@[^>\s]+>$/);
  const depends = (await field('Depends')).split(/,\s*/);
  for (const dep of ['nodejs (>= 20)', 'lvm2', 'open-iscsi', 'nfs-common']) t.true(depends.includes(dep), `Depends: ${dep}`);
  t.false(depends.some((d) => d.startsWith('qemu')), 'qemu-utils is for the tests, not for the drivers');
  t.true(Number(await field('Installed-Size')) > 0);
  const description = await field('Description');
  t.true(description.split('\n').length > 1, 'a synopsis and an extended description');
  const info = await run('dpkg-deb', ['--info', deb]);
  t.regex(info.stdout, /\bmd5sums\b/);
  t.regex(info.stdout, /\bconffiles\b/);
});

test('files, links and modes: drivers where xapi runs them, commands on PATH, plugin, units, logrotate', async (t) => {
  const { entries, root } = await buildOnce();
  const entry = (p: string) => {
    const e = entries.get(p);
    if (!e) throw new Error(`${p} is not in the package`);
    return e;
  };
  t.is(entry('').mode, 'drwxr-xr-x', 'the root of the package is the host\'s /, left 0755');
  for (const [p, e] of entries) t.is(e.owner, 'root/root', `${p} owned by root`);
  for (const type of ['FileSR', 'NFSSR', 'LVMoISCSISR']) {
    t.is(entry(`opt/xensource/sm/${type}`).target, `../../../usr/lib/xcp-sm/drivers/${type}`);
    t.is(entry(`usr/lib/xcp-sm/drivers/${type}`).mode, '-rwxr-xr-x');
  }
  t.is(entry('etc/xapi.d/plugins/tapdisk-pause').target, '../../../usr/lib/xcp-sm/drivers/tapdisk-pause');
  t.is(entry('usr/lib/xcp-sm/drivers/tapdisk-pause').mode, '-rwxr-xr-x');
  for (const name of ['sm', 'sm-gc', 'sm-vhd']) {
    const target = entry(`usr/bin/${name}`).target!;
    t.is(entry(path.join('usr/bin', target).replace(/^(\.\.\/)+/, '')).mode, '-rwxr-xr-x', `${name} -> ${target} executable`);
  }
  for (const bundle of ['FileSR', 'NFSSR', 'LVMoISCSISR', 'sm-gc', 'sm-datapath', 'tapdisk-pause']) entry(`usr/lib/xcp-sm/dist/bundle/${bundle}.mjs`);
  t.is(entry('etc/logrotate.d/SMlog').mode, '-rw-r--r--');
  t.regex(fs.readFileSync(path.join(root, 'etc/logrotate.d/SMlog'), 'utf8'), /^\/var\/log\/SMlog \{/m);
  t.is(fs.readFileSync(path.join(root, 'etc/logrotate.d/SMlog'), 'utf8'), fs.readFileSync(path.join(REPO, 'drivers/logrotate-SMlog'), 'utf8'));
  // The units point at the installed tree.
  const serve = fs.readFileSync(path.join(root, 'lib/systemd/system/sm-serve@.service'), 'utf8');
  t.regex(serve, /Environment=SM_DIR=\/usr\/lib\/xcp-sm$/m);
  t.true(entries.has('usr/lib/xcp-sm/drivers/'), 'sm-serve@ runs ${SM_DIR}/drivers/%i');
  const gcUnit = fs.readFileSync(path.join(root, 'lib/systemd/system/SMGC@.service'), 'utf8');
  const gcBin = /Environment=SM_GC_BIN=(\S+)$/m.exec(gcUnit)?.[1];
  t.truthy(gcBin && entries.has(gcBin.slice(1)), `SMGC@ runs ${gcBin}, which the package holds`);
  t.false([...entries.keys()].some((p) => p.startsWith('usr/lib/xcp-sm/dist/test/')), 'no tests in the package');
  t.false([...entries.keys()].some((p) => /node_modules\/(ava|typescript|esbuild)\//.test(p)), 'no development modules');
  for (const doc of ['copyright', 'changelog.gz', 'operator-guide.md']) entry(`usr/share/doc/xcp-sm/${doc}`);
});

test('control area: conffiles names the file under /etc, md5sums matches every extracted file', async (t) => {
  const { deb, root } = await buildOnce();
  const control = path.join(scratch, 'DEBIAN');
  const e = await run('dpkg-deb', ['-e', deb, control]);
  t.is(e.code, 0, e.stderr);
  t.is(fs.readFileSync(path.join(control, 'conffiles'), 'utf8'), '/etc/logrotate.d/SMlog\n');
  const lines = fs.readFileSync(path.join(control, 'md5sums'), 'utf8').trim().split('\n');
  const listed = new Set<string>();
  for (const line of lines) {
    const [sum, file] = line.split(/  /);
    listed.add(file);
    t.is(createHash('md5').update(fs.readFileSync(path.join(root, file))).digest('hex'), sum, file);
  }
  t.true(listed.has('usr/lib/xcp-sm/dist/bundle/FileSR.mjs'));
  t.false(listed.has('etc/logrotate.d/SMlog'), 'conffiles are not in md5sums');
});

test('the extracted FileSR answers real verbs; sm-vhd, sm and sm-gc run from the extracted /usr/bin', async (t) => {
  const { root } = await buildOnce();
  const smRoot = path.join(scratch, 'sm-root');
  fs.mkdirSync(path.join(smRoot, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(smRoot, 'etc', 'xensource-inventory'), `INSTALLATION_UUID='${randomUUID()}'\n`);
  const env = { ...process.env, SM_ROOT: smRoot, SM_GC: 'off', ORIGINATOR: 'SM' };
  const sr = randomUUID();
  const location = path.join(scratch, 'sr1');
  const call = async (verb: string, extra: Record<string, unknown> = {}, edit = (doc: string) => doc) => {
    const params = { host_ref: 'OpaqueRef:h', session_ref: 'OpaqueRef:s', command: verb, args: [], sr_uuid: sr, device_config: { SRmaster: 'true', location }, ...extra };
    const r = await run(path.join(root, 'opt/xensource/sm/FileSR'), [edit(encodeMethodCall(verb, [params]))], { env, timeoutMs: 60_000 });
    t.is(r.code, 0, `${verb}: ${r.stderr}`);
    const response = parseMethodResponse(r.stdout);
    if (response.kind === 'fault') throw new Error(`${verb}: ${response.faultString}`);
    return response.value;
  };
  t.is(await call('sr_create', { args: ['0'] }), null);
  t.is(await call('sr_attach'), null);
  const { uuid } = (await call('vdi_create', { args: createArgs(8 * MiB) })) as { uuid: string };
  // A request outside the plain XML-RPC subset: the general parser, loaded only then, is found in the package.
  t.is(await call('sr_scan', {}, (doc) => doc.replace('<methodCall>', '<methodCall><!-- by hand -->')), null);
  const image = path.join(location, `${uuid}.vhd`);
  t.true(fs.existsSync(image));
  t.regex(fs.readFileSync(path.join(smRoot, 'var/log/SMlog'), 'utf8'), /SM: \[\d+\] vdi_create /);

  // The datapath the extracted tree starts serves the VDI (its bundle found from the extracted package.json).
  await call('vdi_attach', { vdi_uuid: uuid, vdi_location: uuid, args: ['true'] });
  await call('vdi_activate', { vdi_uuid: uuid, vdi_location: uuid, args: ['true'] });
  const plugin = await run(path.join(root, 'etc/xapi.d/plugins/tapdisk-pause'), [encodeMethodCall('refresh', ['OpaqueRef:s', { sr_uuid: sr, vdi_uuid: uuid, failfast: 'False' }])], { env });
  t.deepEqual(parseMethodResponse(plugin.stdout), { kind: 'result', value: { Status: 'Success', Value: 'True' } });
  await call('vdi_deactivate', { vdi_uuid: uuid, vdi_location: uuid });
  await call('vdi_detach', { vdi_uuid: uuid, vdi_location: uuid });

  const bin = (name: string) => path.join(root, 'usr/bin', name);
  // The README's commands, as written there.
  const q = await run(bin('sm-vhd'), ['query', '-n', path.join(smRoot, 'run/sr-mount', sr, `${uuid}.vhd`), '-v'], { env });
  t.is(q.code, 0, q.stderr);
  t.is(q.stdout.trim(), '8');
  const made = path.join(scratch, 'made.vhd');
  t.is((await run(bin('sm-vhd'), ['create', '-n', made, '-s', '16'], { env })).code, 0);
  t.is((await run(bin('sm-vhd'), ['check', '-n', made], { env })).code, 0);
  const scan = await run(bin('sm'), ['sr-scan', sr], { env });
  t.is(scan.code, 0, scan.stderr);
  t.true(scan.stdout.includes(uuid), 'sm sr-scan lists the VDI');
  const tree = await run(bin('sm'), ['tree', sr], { env });
  t.is(tree.code, 0, tree.stderr);
  const log = await run(bin('sm'), ['log', '--vdi', uuid], { env });
  t.is(log.code, 0, log.stderr);
  t.regex(log.stdout, new RegExp(`vdi_create|${uuid}`));
  const q2 = await run(bin('sm-gc'), ['-u', sr, '-q'], { env });
  t.is(q2.code, 0, q2.stderr);
  const gc = await run(bin('sm-gc'), ['-u', sr, '-g'], { env });
  t.is(gc.code, 0, gc.stderr);
  t.regex(fs.readFileSync(path.join(smRoot, 'var/log/SMlog'), 'utf8'), /SMGC: \[\d+\]/);
  const help = await run(bin('sm-gc'), ['--help'], { env });
  t.regex(help.stdout + help.stderr, /-u/);
});
