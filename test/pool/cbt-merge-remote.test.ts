// Deleting a tracked snapshot merges its changed-block log into its child's.
// When the child is active on another host of the pool, that host's datapath
// holds the child's log and writes it back when it closes: a merge made
// meanwhile would be overwritten and the snapshot's marks lost, and a backup
// would then miss blocks. So the master refuses the delete (24), and a delete
// killed before its merge is completed by recovery only once the child is no
// longer active there. Two hosts on one shared SR directory, as in
// two-hosts.test.ts.
import test from 'ava';
import { MiB, pattern } from '../helpers/model.js';
import { openNbd } from '../helpers/nbd-vdi.js';
import { makeSmEnv, poolHost, readSmlog, startServer, type SmEnv } from '../helpers/sm.js';
import { journals } from '../helpers/sr-state.js';
import { World } from '../helpers/world.js';
import { callVerb } from '../helpers/crash.js';
import { activate, blocksTouched, changedBlocks, deactivate, enableCbt, hasLog, union } from '../cbt/helpers.js';

const vdiArgs = (uuid: string, extra: Record<string, unknown> = {}) => ({ vdi_uuid: uuid, vdi_location: uuid, ...extra });
const SIZE = 16 * MiB;

/** Writes through a host's own datapath for the VDI (one connection, flushed), the model kept in step; the blocks it touched. */
async function writeOn(w: World, ctx: SmEnv, vdi: string, offset: number, length: number, seed: number): Promise<number[]> {
  const c = await openNbd(ctx, vdi);
  try {
    const data = pattern(seed, length);
    await c.write(offset, data);
    w.models.get(vdi)!.write(offset, data);
    await c.flush();
  } finally {
    c.close();
  }
  return blocksTouched(offset, length);
}

test('a tracked snapshot whose log merges into a VDI active on the other host: the delete is refused, and a killed delete is completed only once the VDI is inactive there; no written block goes unlisted', async (t) => {
  const master = await makeSmEnv();
  const w = await World.open(master);
  const slave = poolHost(master, 'slave', false);
  const s = await startServer(slave);
  try {
    const V = await w.create('V', SIZE);
    await enableCbt(w, V);
    const base = await w.snapshot('V', 'A');
    // Marks of the master's writes, which the snapshot M's log takes with it.
    await activate(w, V);
    const onMaster = await writeOn(w, master, V, 3 * MiB + 512, 200 * 1024, 1);
    await deactivate(w, V);
    const M = await w.snapshot('V', 'M');
    t.true(hasLog(w, M), "M holds the master's marks");

    await s.call('sr_attach');
    await s.call('vdi_attach', vdiArgs(V, { args: ['true'] }));
    await s.call('vdi_activate', vdiArgs(V, { args: ['true'] }));
    const refused = await w.s.fault('vdi_delete', vdiArgs(M));
    t.is(refused.code, 24, `the delete is refused while V is active on the slave: ${refused.faultString}`);
    t.true(hasLog(w, M), 'the refused delete left the log');
    await s.call('vdi_deactivate', vdiArgs(V));
    await s.call('vdi_detach', vdiArgs(V));

    // The delete killed after its image went, before the merge; then V is activated on the slave and written there.
    const killed = await callVerb(w, 'vdi_delete', vdiArgs(M), { ...master.env, SM_FAULT: 'delete-image-gone' });
    t.is(killed.signal, 'SIGKILL', `vdi_delete killed (exit ${killed.code}: ${killed.stderr})`);
    t.is(journals(master).length, 1, 'its journal is left');
    await s.call('vdi_attach', vdiArgs(V, { args: ['true'] }));
    await s.call('vdi_activate', vdiArgs(V, { args: ['true'] }));
    const onSlave = await writeOn(w, slave, V, 9 * MiB, 64 * 1024, 2);

    await w.s.call('sr_scan');
    t.is(journals(master).length, 1, 'recovery waits while V is active on the slave');
    t.true(hasLog(w, M), 'the log is not merged meanwhile');
    t.regex(readSmlog(master), new RegExp(`recovery: delete of ${M} waits: .*active on host ${slave.hostId}`));

    const later = await writeOn(w, slave, V, 12 * MiB, 4096, 3);
    await s.call('vdi_deactivate', vdiArgs(V));
    await s.call('vdi_detach', vdiArgs(V));
    await w.s.call('sr_scan');
    t.deepEqual(journals(master), [], 'once V is inactive there, recovery completes the delete');
    t.false(hasLog(w, M), "M's log is merged away");
    w.models.delete(M);

    const T = await w.snapshot('V', 'T');
    const listed = await changedBlocks(w, base, T);
    const written = union(onMaster, onSlave, later);
    t.deepEqual(
      written.filter((b) => !listed.includes(b)),
      [],
      `every block written on either host since the base is listed (${listed.length} listed)`,
    );
    await w.check(t);
    await s.call('sr_detach');
  } finally {
    await s.stop();
    await w.close();
    await master.cleanup();
  }
});
