import test from 'ava';
import { createServer } from 'node:net';
import * as nfs from '../../lib/os/nfs.js';
import { ToolError } from '../../lib/os/run.js';
import { InvalidArgumentError } from '../../lib/os/validate.js';
import { fixture, recorder } from './helpers.js';

const BASE = 'soft,proto=tcp,vers=3,acdirmin=0,acdirmax=0,timeo=200,retrans=4';

test('mount argv: SM options, version 3 by default, 4, 4.0, 4.1 and 4.2, extra options last', (t) => {
  const m = { server: '10.0.0.5', path: '/export/sr', mountpoint: '/run/sr-mount/abc' };
  t.deepEqual(nfs.mountArgs(m), ['-t', 'nfs', '-o', BASE, '10.0.0.5:/export/sr', '/run/sr-mount/abc']);
  for (const v of ['4', '4.0', '4.2']) t.deepEqual(nfs.mountArgs({ ...m, version: v })[3], BASE.replace('vers=3', `vers=${v}`));
  t.deepEqual(nfs.mountArgs({ ...m, version: '4.1', options: 'noatime, rsize=65536' })[3], `${BASE.replace('vers=3', 'vers=4.1')},noatime,rsize=65536`);
  t.deepEqual(nfs.mountArgs({ ...m, server: 'fd00::5' })[4], '[fd00::5]:/export/sr');
});

test('versions other than 3, 4, 4.0, 4.1 and 4.2 are refused before mount runs', async (t) => {
  const rec = recorder();
  for (const v of ['2', '4.3', '4.10', '5', 'v3', '3 ', '3,nolock', '3.0']) {
    const e = await t.throwsAsync(nfs.mountNfs({ server: '127.0.0.1', path: '/x', mountpoint: '/mnt/x', version: v }, { run: rec.run }), {
      instanceOf: nfs.NfsError,
    });
    t.is(e.kind, 'version');
  }
  t.is(rec.calls.length, 0);
  t.is(nfs.checkNfsVersion(undefined), '3');
  t.is(nfs.checkNfsVersion(''), '3');
});

test('injection through server, path, mount point or options is refused', (t) => {
  const m = { server: '127.0.0.1', path: '/x', mountpoint: '/mnt/x' };
  for (const bad of [
    { server: '127.0.0.1;touch /tmp/x' },
    { server: '-oProxyCommand=touch /tmp/x' },
    { path: '../../etc' },
    { path: '/export/../../etc' },
    { mountpoint: '-o' },
    { mountpoint: 'relative' },
    { options: 'rw;touch /tmp/x' },
    { options: '-oProxyCommand' },
    { options: 'vers=4' },
    { options: 'hard' },
    { options: 'a b' },
  ]) {
    t.throws(() => nfs.mountArgs({ ...m, ...bad }), { instanceOf: InvalidArgumentError }, JSON.stringify(bad));
  }
});

test('mountNfs runs mount with a time limit; a failure names the server\'s reason', async (t) => {
  const rec = recorder();
  await nfs.mountNfs({ server: '127.0.0.1', path: '/srv/sr', mountpoint: '/mnt/sr' }, { run: rec.run });
  t.deepEqual(rec.argv(), [['mount', '-t', 'nfs', '-o', BASE, '127.0.0.1:/srv/sr', '/mnt/sr']]);
  t.is(rec.calls[0]?.opts?.timeoutMs, 120_000);
  const failing = recorder((c) => {
    throw new ToolError('mount', c.args, 32, fixture('mount-not-exported.stderr'), '');
  });
  const e = await t.throwsAsync(nfs.mountNfs({ server: '127.0.0.1', path: '/srv/none', mountpoint: '/mnt/fx' }, { run: failing.run }), {
    instanceOf: nfs.NfsError,
  });
  t.is(e.kind, 'mount');
  t.is(e.message, 'mounting 127.0.0.1:/srv/none on /mnt/fx failed: mount.nfs: access denied by server while mounting 127.0.0.1:/srv/none');
});

test('umount argv', async (t) => {
  const rec = recorder();
  await nfs.umountNfs('/mnt/sr', {}, { run: rec.run });
  await nfs.umountNfs('/mnt/sr', { force: true, lazy: true }, { run: rec.run });
  t.deepEqual(rec.argv(), [
    ['umount', '/mnt/sr'],
    ['umount', '-f', '-l', '/mnt/sr'],
  ]);
});

test('showmount: argv and real output parsed into {path, accesslist}', async (t) => {
  const rec = recorder(() => ({ stdout: fixture('showmount-e.txt') }));
  const exports = await nfs.showmount('127.0.0.1', { run: rec.run });
  t.deepEqual(rec.argv(), [['showmount', '-e', '127.0.0.1']]);
  t.deepEqual(
    exports.map((e) => ({ ...e, accesslist: e.accesslist.sort() })).sort((a, b) => a.path.localeCompare(b.path)),
    [
      { path: '/srv/fx', accesslist: ['127.0.0.1'] },
      { path: '/srv/fx2', accesslist: ['*.example.test', '127.0.0.2', '127.0.0.3'] },
    ],
  );
  t.deepEqual(nfs.parseShowmount('Export list for x:\n/a (everyone)\n'), [{ path: '/a', accesslist: ['(everyone)'] }]);
  await t.throwsAsync(nfs.showmount('-e', { run: rec.run }), { instanceOf: InvalidArgumentError });
});

test('rpcinfo: real output parsed; NFS versions offered over TCP', async (t) => {
  const rec = recorder(() => ({ stdout: fixture('rpcinfo-p.txt') }));
  const programs = await nfs.rpcinfo('127.0.0.1', { run: rec.run });
  t.deepEqual(rec.argv(), [['rpcinfo', '-p', '127.0.0.1']]);
  t.like(programs.find((p) => p.service === 'nfs'), { program: 100003, proto: 'tcp', port: 2049 });
  t.deepEqual(nfs.nfsVersionsOffered(programs), [3, 4]);
});

test('/proc/mounts parsing (real lines)', (t) => {
  const entries = nfs.parseProcMounts(fixture('proc-mounts.txt'));
  const e = entries.find((x) => x.fstype === 'nfs');
  t.like(e, { source: '127.0.0.1:/srv/fx', mountpoint: '/mnt/fx' });
  for (const o of ['vers=3', 'soft', 'proto=tcp', 'timeo=200', 'retrans=4', 'acdirmin=0', 'acdirmax=0']) t.true(e!.options.includes(o), o);
  t.deepEqual(nfs.parseProcMounts('a /mnt/with\\040space nfs rw 0 0\n')[0]?.mountpoint, '/mnt/with space');
});

test('checkServer: a closed port fails fast with a clear reason; an open one passes', async (t) => {
  const server = createServer((s) => s.destroy());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as { port: number }).port;
  server.close();
  await new Promise((r) => setTimeout(r, 50));
  const { tcpProbe, UnreachableError } = await import('../../lib/os/net.js');
  const e = await t.throwsAsync(tcpProbe('127.0.0.1', port, 2000), { instanceOf: UnreachableError });
  t.is(e.message, `127.0.0.1 is not reachable on TCP port ${port}: connection refused`);
  const open = createServer((s) => s.destroy());
  await new Promise<void>((r) => open.listen(0, '127.0.0.1', () => r()));
  await t.notThrowsAsync(tcpProbe('127.0.0.1', (open.address() as { port: number }).port, 2000));
  open.close();
});
