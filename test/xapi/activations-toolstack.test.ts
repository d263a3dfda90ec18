// Where a VDI is active, as the master sees it. On LVM the SR's activation
// records are host-local (each host's `run/sm/active/<sr>/`): with a
// toolstack, the master adds what xapi records, the `host_<ref>` keys every
// activation writes, naming each other host by its uuid; this host's own keys
// are left to its own records. On a backend whose records the whole pool
// sees (File, NFS), the toolstack is not asked. xapi cannot run here: the
// stand-in (test/helpers/xapi-standin.ts) keeps the records; the backends are
// the real classes (LvmBackend's records are plain files: no LVM command runs).
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { poolActivations } from '../../lib/sr/activation.js';
import { FileBackend } from '../../lib/sr/file-backend.js';
import { LvmBackend } from '../../lib/sr/lvm-backend.js';
import { ToolstackDb } from '../../lib/sr/xapi-sync.js';
import { XapiSession, type VdiIntroduce } from '../../lib/xapi/index.js';
import { XapiStandin } from '../helpers/xapi-standin.js';

const SR_REF = 'OpaqueRef:sr-1';
const SESSION = 'OpaqueRef:session-1';
const HERE = { ref: 'OpaqueRef:host-1', uuid: randomUUID() };
const B = { ref: 'OpaqueRef:host-2', uuid: randomUUID() };
const C = { ref: 'OpaqueRef:host-3', uuid: randomUUID() };

function record(uuid: string, sm_config: Record<string, string>): VdiIntroduce {
  return {
    uuid, name_label: 'n', name_description: '', SR: SR_REF, type: 'user', sharable: false, read_only: false, other_config: {}, location: uuid,
    xenstore_data: {}, sm_config, managed: true, virtual_size: 2 ** 30, physical_utilisation: 512, metadata_of_pool: '', is_a_snapshot: false,
    snapshot_time: '', snapshot_of: '', cbt_enabled: false,
  };
}

test('host-local records (LVM): the toolstack adds the VDIs other hosts serve, by host uuid; a File SR does not ask it', async (t) => {
  const root = await mkdtemp(path.join(os.tmpdir(), 'activations-'));
  process.env.SM_ROOT = root; // this worker's host: its id and its run state
  await mkdir(path.join(root, 'etc'), { recursive: true });
  await writeFile(path.join(root, 'etc', 'xensource-inventory'), `INSTALLATION_UUID='${HERE.uuid}'\n`);
  const sr = randomUUID();
  const socket = path.join(root, 'xapi');
  const xapi = await XapiStandin.start(socket, { smSessions: [{ ref: SESSION, sr: SR_REF }], srs: [{ ref: SR_REF, uuid: sr }], hosts: [HERE, B, C] });
  try {
    const session = new XapiSession(socket, SESSION);
    const [onB, onBro, onC, here, idle] = [randomUUID(), randomUUID(), randomUUID(), randomUUID(), randomUUID()];
    await session.vdiIntroduce(record(onB, { [`host_${B.ref}`]: 'RW', 'vhd-parent': randomUUID() }));
    await session.vdiIntroduce(record(onBro, { [`host_${B.ref}`]: 'RO' }));
    await session.vdiIntroduce(record(onC, { [`host_${C.ref}`]: 'RW', paused: 'true' }));
    await session.vdiIntroduce(record(here, { [`host_${HERE.ref}`]: 'RW' }));
    await session.vdiIntroduce(record(idle, {}));
    const db = new ToolstackDb(session, sr, { srRef: SR_REF, hostRef: HERE.ref });

    const lvm = new LvmBackend(sr, `VG_XenStorage-${sr}`, ['/dev/null']);
    t.false(lvm.activationsPoolWide);
    const mine = { host: HERE.uuid, writable: true, since: new Date().toISOString() };
    await lvm.writeActivation(here, mine);

    t.deepEqual([...(await poolActivations(lvm)).entries()], [[here, mine]], 'standalone: only this host records');
    const seen = await poolActivations(lvm, db);
    t.deepEqual(
      Object.fromEntries([...seen].map(([v, a]) => [v, `${a.host}/${a.writable ? 'RW' : 'RO'}`])),
      { [here]: `${HERE.uuid}/RW`, [onB]: `${B.uuid}/RW`, [onBro]: `${B.uuid}/RO`, [onC]: `${C.uuid}/RW` },
      "with the toolstack: this host's records and the VDIs the other hosts serve, by their uuid",
    );
    t.deepEqual(seen.get(here), mine, "this host's VDI is its own record, not the toolstack's");

    // A GC run has no host_ref of its own when the toolstack does not know this host: its own keys are still its own.
    const gcDb = new ToolstackDb(session, sr, {});
    t.deepEqual((await poolActivations(lvm, gcDb)).get(here), mine, 'without a host ref, this host is still told apart by its uuid');

    const file = new FileBackend(sr, path.join(root, 'sr'));
    await mkdir(path.join(root, 'sr'), { recursive: true });
    t.true(file.activationsPoolWide);
    xapi.calls.length = 0;
    t.deepEqual([...(await poolActivations(file, db)).keys()], [], 'a File SR: its own records only');
    t.deepEqual(xapi.calls.map((c) => c.method), [], 'the toolstack is not asked');
  } finally {
    await xapi.close();
    await rm(root, { recursive: true, force: true });
  }
});
