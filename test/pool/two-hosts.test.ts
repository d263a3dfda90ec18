// Two hosts of a pool on one shared SR directory: each its own SM_ROOT (locks,
// attach state, SMlog, xensource-inventory), the master sending SRmaster=true,
// the slave SRmaster=false. Only the master changes the SR, recovers journals
// and runs the GC; a VDI active on the slave is safe from the master's GC; a
// slave reads exact data through its datapath while the master coalesces, and
// the master refuses to snapshot a VDI active on the slave (24).
import fs from 'node:fs';
import test from 'ava';
import { MiB } from '../helpers/model.js';
import { openNbd } from '../helpers/nbd-vdi.js';
import {
  callDriver,
  createArgs,
  datapathPids,
  gc,
  makeSmEnv,
  poolHost,
  readSmlog,
  request,
  smCli,
  smGc,
  startServer,
  type Server,
  type SmEnv,
  waitFor,
} from '../helpers/sm.js';
import { activations, diffVdi, journals, snapshotDir } from '../helpers/sr-state.js';
import { World } from '../helpers/world.js';

const vdiArgs = (uuid: string, extra: Record<string, unknown> = {}) => ({ vdi_uuid: uuid, vdi_location: uuid, ...extra });

/** The master's World (SR created and attached) and a slave driver server on the same SR. */
async function inPool(fn: (w: World, slave: SmEnv, s: Server) => Promise<void>): Promise<void> {
  const master = await makeSmEnv();
  const w = await World.open(master);
  const slave = poolHost(master, 'slave', false);
  const s = await startServer(slave);
  try {
    await fn(w, slave, s);
  } finally {
    await s.stop();
    await w.close();
    await master.cleanup();
  }
}

/** Everything in the shared SR directory, hashed. */
const srTree = (ctx: SmEnv) => snapshotDir(ctx.location);

test('a slave refuses every verb that changes the SR (58) and changes nothing; its GC does nothing', async (t) => {
  await inPool(async (w, slave, s) => {
    const master = w.ctx;
    await w.create('V', 8 * MiB);
    await w.fill('V', 0, 3 * MiB);
    await w.snapshot('V', 'S');
    await w.delete('S'); // leaves the GC work to do: V can be leaf-coalesced
    const before = srTree(master);
    await s.call('sr_attach');
    t.deepEqual(srTree(master), before, 'sr_attach on a slave writes nothing to the SR');

    const V = w.uuid('V');
    const refused: [string, Record<string, unknown>][] = [
      ['vdi_create', { args: createArgs(MiB), vdi_type: 'user' }],
      ['vdi_snapshot', vdiArgs(V)],
      ['vdi_clone', vdiArgs(V)],
      ['vdi_delete', vdiArgs(V)],
      ['vdi_resize', vdiArgs(V, { args: [String(16 * MiB)] })],
      ['vdi_resize_online', vdiArgs(V, { args: [String(16 * MiB)] })],
      ['vdi_update', vdiArgs(V)],
      ['vdi_introduce', vdiArgs(V, { vdi_type: 'user' })],
      ['sr_scan', {}],
      ['sr_update', {}],
      ['sr_create', { args: ['0'] }],
      ['sr_delete', {}],
    ];
    for (const [verb, extra] of refused) {
      const f = await s.fault(verb, extra);
      t.is(f.code, 58, `${verb} on a slave: ${f.faultString}`);
      t.regex(f.faultString, /pool master/, `${verb}: the fault says why`);
    }
    t.deepEqual(srTree(master), before, 'the refused verbs changed nothing');

    // The same refusal through the XML-RPC path a toolstack uses.
    const viaXml = await callDriver('vdi_snapshot', request(slave, 'vdi_snapshot', vdiArgs(V)), slave.env);
    t.like(viaXml.response, { kind: 'fault', faultCode: 58 });

    const r = await smGc(slave, ['-g']);
    t.is(r.code, 0, r.stderr);
    t.regex(readSmlog(slave), new RegExp(`SR ${slave.sr} is attached here as a pool slave: the GC runs on the master`));
    const dry = await smGc(slave, ['--dry-run']);
    t.is(dry.code, 0);
    t.regex(dry.stdout, /pool slave: the GC runs on the master/);
    t.deepEqual(srTree(master), before, "the slave's GC touched nothing");

    await gc(master);
    t.is(await w.shape(), 'V', "the master's GC does the work");
    await w.check(t);
  });
});

test('a VDI active on the slave is not leaf-coalesced by the master; once deactivated it is', async (t) => {
  await inPool(async (w, slave, s) => {
    const master = w.ctx;
    const A = await w.create('A', 8 * MiB);
    await w.fill('A', 0, 3 * MiB);
    await w.snapshot('A', 'S');
    await w.fill('A', 4 * MiB, MiB);
    await s.call('sr_attach');
    await s.call('vdi_attach', vdiArgs(A, { args: ['true'] }));
    await s.call('vdi_activate', vdiArgs(A, { args: ['true'] }));
    t.like(activations(master).get(A), { host: slave.hostId, writable: true }, 'the record in the SR names the slave');

    const tree = await smCli(master, ['tree', master.sr]);
    t.regex(tree.stdout, new RegExp(`${A.slice(0, 8)}\\[VHD\\]\\([^)]*\\|a\\)`), "the master's `sm tree` shows A active");
    t.is((await w.s.fault('vdi_delete', vdiArgs(A))).code, 24, 'the master does not delete a VDI active on the slave');
    t.is((await s.fault('sr_detach')).code, 16, 'the slave does not detach while its VDI is active');
    await w.s.call('vdi_attach', vdiArgs(A, { args: ['false'] }));
    t.is((await w.s.fault('vdi_activate', vdiArgs(A, { args: ['false'] }))).code, 24, 'the master cannot activate it as well');
    await w.s.call('vdi_detach', vdiArgs(A));
    t.is(activations(master).get(A)?.host, slave.hostId, "the master's detach left the slave's record alone");

    await w.delete('S');
    await gc(master);
    t.is(await w.shape(), '*?(A)', 'A keeps its parent while active on the slave');
    t.regex(readSmlog(master), new RegExp(`Leaf-coalesce of ${A.slice(0, 8)}\\S* skipped: the VDI is active on host ${slave.hostId}`));

    await s.call('vdi_deactivate', vdiArgs(A));
    await s.call('vdi_detach', vdiArgs(A));
    t.deepEqual([...activations(master).keys()], [], 'deactivate and detach remove the record');
    await gc(master);
    t.is(await w.shape(), 'A', 'the GC collapses A once no host has it active');
    await w.check(t);
    await s.call('sr_detach');
  });
});

test("a slave that went down with a VDI active: its stale record holds the GC off until the slave's sr_attach clears it", async (t) => {
  await inPool(async (w, slave, s) => {
    const master = w.ctx;
    const A = await w.create('A', 4 * MiB);
    await w.fill('A', 0, MiB);
    await w.snapshot('A', 'S');
    await w.delete('S');
    await s.call('sr_attach');
    await s.call('vdi_attach', vdiArgs(A, { args: ['true'] }));
    await s.call('vdi_activate', vdiArgs(A, { args: ['true'] }));
    // The slave goes down: its datapath with it, its runtime state (tmpfs /run) is gone, the record in the SR stays.
    for (const pid of datapathPids(slave.root)) process.kill(pid, 'SIGKILL');
    fs.rmSync(`${slave.root}/run`, { recursive: true, force: true });
    await gc(master);
    t.is(await w.shape(), '*?(A)', 'the record still protects A');

    // The master's sr_attach leaves another host's record alone.
    await w.s.call('sr_attach');
    t.is(activations(master).get(A)?.host, slave.hostId);

    await s.call('sr_attach');
    t.deepEqual([...activations(master).keys()], [], "the slave's sr_attach cleared its own stale record");
    t.regex(readSmlog(slave), new RegExp(`VDI ${A}: stale activation record of this host \\(${slave.hostId}`));
    await gc(master);
    t.is(await w.shape(), 'A');
    await w.check(t);
  });
});

test("the master killed mid-snapshot: the slave's sr_attach and vdi_attach leave the journal alone; the master's sr_scan recovers it", async (t) => {
  await inPool(async (w, slave, s) => {
    const master = w.ctx;
    const A = await w.create('A', 8 * MiB);
    await w.fill('A', 0, 3 * MiB);
    const killed = await callDriver('vdi_snapshot', request(master, 'vdi_snapshot', vdiArgs(A)), { ...master.env, SM_FAULT: 'snapshot-child-created' });
    t.is(killed.signal, 'SIGKILL', killed.stderr);
    t.true(journals(master).length > 0, 'the snapshot was journaled');
    const crashed = srTree(master);

    await s.call('sr_attach');
    await s.call('vdi_attach', vdiArgs(A, { args: ['false'] }));
    await s.call('vdi_detach', vdiArgs(A));
    t.deepEqual(srTree(master), crashed, "the slave neither recovered nor changed anything: the journal may be the master's change in progress");
    t.notRegex(readSmlog(slave), /recovery:/);

    await w.scan();
    t.deepEqual(journals(master), [], "the master's sr_scan recovered the snapshot");
    t.regex(readSmlog(master), /recovery: /);
    await w.check(t, { scanned: true });
  });
});

test('the slave reads exact data through its datapath while the master coalesces the chain under it; the master may not snapshot it (24)', async (t) => {
  await inPool(async (w, slave, s) => {
    const master = w.ctx;
    const A = await w.create('A', 8 * MiB);
    await w.fill('A', 0, 4 * MiB);
    // Two hidden ancestors for the GC to coalesce while the slave reads.
    for (let i = 0; i < 2; i++) {
      await w.snapshot('A', `S${i}`);
      await w.fill('A', (4 + 2 * i) * MiB, 2 * MiB);
      await w.delete(`S${i}`);
    }
    await s.call('sr_attach');
    const attached = (await s.call('vdi_attach', vdiArgs(A, { args: ['false'] }))) as { params: string; params_nbd: string };
    await s.call('vdi_activate', vdiArgs(A, { args: ['false'] }));
    t.true(attached.params.startsWith(`${slave.root}/run/blktap-control/nbd/`), `the slave serves A from its own datapath (${attached.params})`);
    const want = w.models.get(A)!.read(0, 8 * MiB);

    const client = await openNbd(slave, A);
    let stop = false;
    let exact = 0;
    const reader = (async () => {
      for (let i = 0; !stop; i++) {
        t.true((await client.read(0, 8 * MiB)).equals(want), `read ${i}: the slave's read matches the model`);
        exact++;
      }
    })();
    for (let i = 0; i < 3; i++) {
      t.is((await w.s.fault('vdi_snapshot', vdiArgs(A))).code, 24, 'a VDI active on another host is not snapshotted');
      await gc(master);
    }
    stop = true;
    await reader;
    client.close();
    t.log(`slave reads: ${exact} exact`);
    t.true(exact >= 3, `the slave read while the master worked (${exact} reads)`);
    t.regex(readSmlog(master), /Coalesc/, 'the master coalesced while the slave read');

    await s.call('vdi_deactivate', vdiArgs(A));
    await s.call('vdi_detach', vdiArgs(A));
    await w.check(t);
  });
});

test('a VDI the slave activates while the master is leaf-coalescing it: the GC abandons before the swap', async (t) => {
  await inPool(async (w, slave, s) => {
    const master = w.ctx;
    const A = await w.create('A', 32 * MiB);
    await w.fill('A', 0, 4 * MiB);
    await w.snapshot('A', 'S');
    await w.fill('A', 8 * MiB, 16 * MiB);
    await w.delete('S');
    await s.call('sr_attach');
    // A slow copy (4 MiB/s: about 4 s) leaves time to activate A on the slave meanwhile.
    const collecting = smGc(master, ['-g'], { ...master.env, SM_GC_MAX_MIBPS: '4' });
    await waitFor('the leaf copy to start', () => readSmlog(master).includes(`Leaf-coalescing ${A.slice(0, 8)}`), 30_000, 20);
    await s.call('vdi_attach', vdiArgs(A, { args: ['true'] }));
    await s.call('vdi_activate', vdiArgs(A, { args: ['true'] }));
    const r = await collecting;
    t.is(r.code, 0, r.stderr);
    t.regex(readSmlog(master), new RegExp(`Leaf-coalesce of ${A.slice(0, 8)} abandoned: the VDI became active on host ${slave.hostId}`));
    t.is(await w.shape(), '*?(A)', 'A was not swapped under the slave');
    t.deepEqual(journals(master), []);
    t.is(await diffVdi(master, A, w.models.get(A)!), undefined, 'A reads as before');

    await s.call('vdi_deactivate', vdiArgs(A));
    await s.call('vdi_detach', vdiArgs(A));
    await gc(master);
    t.is(await w.shape(), 'A');
    await w.check(t);
  });
});
