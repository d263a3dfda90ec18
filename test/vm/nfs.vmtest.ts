// (c) NFS through lib/os/nfs against the kernel nfsd in the guest.
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import * as nfs from '../../lib/os/nfs.js';
import { rejects } from './support/assert.js';
import { requireGuest } from './support/guest.js';
import { NfsServer } from './support/nfs-server.js';


requireGuest();
const SERVER = '127.0.0.1';
const EXPORT = '/srv/smvm-nfs';
const OTHER = '/srv/smvm-nfs-ro';
const MOUNTS = ['/mnt/smvm-v3', '/mnt/smvm-v41', '/mnt/smvm-v4'];

/** Mounts <export>/sr-<v> with `version`, checks the options in /proc/mounts, writes a file, unmounts. */
async function mountAndWrite(version: string, mountpoint: string, expectVers: string): Promise<void> {
  await mkdir(mountpoint, { recursive: true });
  const sub = `sr-${version.replace('.', '')}`;
  await mkdir(`${EXPORT}/${sub}`, { recursive: true });
  // EXPORT is also the v4 pseudo root (fsid=0): v4 names EXPORT/x as /x
  const remote = version === '3' ? `${EXPORT}/${sub}` : `/${sub}`;
  await nfs.mountNfs({ server: SERVER, path: remote, mountpoint, version, options: 'noatime' });
  assert.ok(await nfs.isNfsMounted(mountpoint));
  const entry = nfs.parseProcMounts(await readFile('/proc/mounts', 'utf8')).find((m) => m.mountpoint === mountpoint);
  assert.equal(entry?.source, `${SERVER}:${remote}`);
  for (const o of [`vers=${expectVers}`, 'soft', 'proto=tcp', 'timeo=200', 'retrans=4', 'acdirmin=0', 'acdirmax=0', 'noatime']) {
    assert.ok(entry?.options.includes(o), `${o} in ${entry?.options.join(',')}`);
  }
  const data = `written over NFS ${version}\n`;
  await writeFile(`${mountpoint}/hello.txt`, data);
  assert.equal(await readFile(`${EXPORT}/${sub}/hello.txt`, 'utf8'), data, 'the write is on the server');
  await nfs.umountNfs(mountpoint);
  assert.ok(!(await nfs.isNfsMounted(mountpoint)));
}

describe('nfs', { timeout: 300_000 }, () => {
  let server: NfsServer | undefined;

  before(async () => {
    server = await NfsServer.start([
      // fsid 0: also the NFSv4 pseudo root (the guest's overlay root can't be one)
      { path: EXPORT, clients: ['127.0.0.1'], fsid: 0 },
      { path: OTHER, clients: ['127.0.0.2', '127.0.0.3'], fsid: 2 },
    ]);
  });

  after(async () => {
    for (const m of MOUNTS) if (await nfs.isNfsMounted(m)) await nfs.umountNfs(m, { lazy: true }).catch(() => {});
    await server?.stop();
  });

  it('showmount lists the exports with their access lists', async () => {
    const exports = await nfs.showmount(SERVER);
    assert.deepEqual(
      exports.map((e) => ({ ...e, accesslist: e.accesslist.sort() })).sort((a, b) => a.path.localeCompare(b.path)),
      [
        { path: EXPORT, accesslist: ['127.0.0.1'] },
        { path: OTHER, accesslist: ['127.0.0.2', '127.0.0.3'] },
      ],
    );
  });

  it('rpcinfo shows NFS 3 and 4 over TCP', async () => {
    assert.deepEqual(nfs.nfsVersionsOffered(await nfs.rpcinfo(SERVER)), [3, 4]);
  });

  it('mount vers=3 with the SR options, write, umount', () => mountAndWrite('3', MOUNTS[0]!, '3'));
  it('mount vers=4.1, write, umount', () => mountAndWrite('4.1', MOUNTS[1]!, '4.1'));
  it('mount vers=4 gets the highest 4.x the server has (4.2)', () => mountAndWrite('4', MOUNTS[2]!, '4.2'));

  it('an unsupported version is refused before anything runs', async () => {
    const e = await rejects(nfs.mountNfs({ server: SERVER, path: EXPORT, mountpoint: MOUNTS[0]!, version: '2' }), nfs.NfsError);
    assert.equal(e.kind, 'version');
  });

  it('an unreachable server gives a clear error within seconds', async () => {
    const start = Date.now();
    // nfsd listens on 127.0.0.1 only (see NfsServer): 127.0.0.9 refuses NFS
    const e = await rejects(nfs.mountNfs({ server: '127.0.0.9', path: EXPORT, mountpoint: MOUNTS[0]! }), nfs.NfsError);
    assert.equal(e.kind, 'unreachable');
    assert.equal(e.message, 'NFS server 127.0.0.9 is not reachable on TCP port 2049: connection refused');
    assert.ok(Date.now() - start < 5000);
    assert.ok(!(await nfs.isNfsMounted(MOUNTS[0]!)));
  });

  it("a path the server does not export fails with the server's reason", async () => {
    const e = await rejects(nfs.mountNfs({ server: SERVER, path: '/srv/not-exported', mountpoint: MOUNTS[0]! }), nfs.NfsError);
    assert.equal(e.kind, 'mount');
    assert.match(e.message, /^mounting 127\.0\.0\.1:\/srv\/not-exported on \/mnt\/smvm-v3 failed: mount\.nfs: access denied by server/);
  });
});
