// Two hosts of a pool under one toolstack: host A (the SR master) snapshots,
// clones and resizes a VDI that host B serves. A's driver pauses it on B as the
// established SM does (reference §5): `paused` in the database, then
// host.call_plugin(B, "tapdisk-pause", "pause"), the change, "unpause". xapi
// cannot run here: the stand-in (test/helpers/xapi-standin.ts) answers
// call_plugin for B by running B's real plugin executable
// (drivers/tapdisk-pause, with B's SM_ROOT), exactly as xapi's host.call_plugin
// runs /etc/xapi.d/plugins/tapdisk-pause on that host. Each host is its own
// SM_ROOT and host id on the same SR directory; B's datapath is a real
// sm-datapath serving NBD.
import test from 'ava';
import { MiB, pattern } from '../helpers/model.js';
import { isServed, openNbd } from '../helpers/nbd-vdi.js';
import { callDriver, createArgs, readSmlog, request, sleep, waitFor, xml } from '../helpers/sm.js';
import { activations, readTree } from '../helpers/sr-state.js';
import { activeOnB, exportRaw, OTHER_HOST_REF, vdiArgs, withPool } from './pool-world.js';

const BLOCK = 64 * 1024;

test('A snapshots a VDI B writes to over NBD: B is paused through the plugin, the snapshot holds exactly the acknowledged writes, B writes on into the new leaf', async (t) => {
  await withPool(async (p) => {
    const size = 64 * MiB;
    const { uuid: V } = (await xml(p.a, 'vdi_create', { args: createArgs(size) })) as { uuid: string };
    await activeOnB(p, V);
    t.is(activations(p.a).get(V)?.host, p.b.hostId, "the SR's record names B");

    // The writer on B: one write at a time, block i holds pattern(i + 1); `acked` counts the replies.
    const blocks = size / BLOCK;
    const c = await openNbd(p.b, V);
    let acked = 0;
    let stopAt = blocks;
    const writer = (async () => {
      for (let i = 0; i < Math.min(stopAt, blocks); i++) {
        await c.write(i * BLOCK, pattern(i + 1, BLOCK));
        acked = i + 1;
        await sleep(15); // paced: the writer must outlast the snapshot, even on a loaded machine
      }
    })();
    await waitFor('the writer to be writing', () => acked >= 5 || undefined);
    const ackedBefore = acked;
    p.xapi.calls.length = 0;
    const { uuid: S } = (await xml(p.a, 'vdi_snapshot', vdiArgs(V))) as { uuid: string };
    const issuedBy = acked + 1; // at most one write was in flight when the snapshot returned
    stopAt = Math.min(blocks, acked + 20); // and some more after it
    await writer; // rejects if the writer saw any error
    const written = acked;
    t.true(written > issuedBy, 'writes went on after the snapshot');

    // The snapshot is a prefix of the writes: everything acknowledged before the pause, nothing after.
    const snap = await exportRaw(p.a, S);
    let k = 0;
    while (k < blocks && snap.subarray(k * BLOCK, (k + 1) * BLOCK).equals(pattern(k + 1, BLOCK))) k++;
    t.true(snap.subarray(k * BLOCK).equals(Buffer.alloc(size - k * BLOCK)), `after block ${k} the snapshot is empty (no write after the pause, none torn)`);
    t.true(k >= ackedBefore, `every write acknowledged before the snapshot began is in it (${k} >= ${ackedBefore})`);
    t.true(k <= issuedBy, `no write issued after the snapshot returned is in it (${k} <= ${issuedBy})`);
    t.log(`the snapshot holds the first ${k} writes: ${ackedBefore} were acknowledged when it began, ${issuedBy} issued when it returned, ${written} in all`);

    // B serves the new leaf: its later writes are in V, not in the base V now reads through.
    const tree = await readTree(p.a);
    const base = tree.get(V)!.parent!;
    t.is(tree.get(S)!.parent, base);
    const all = Buffer.concat(Array.from({ length: written }, (_, i) => pattern(i + 1, BLOCK)));
    t.true((await c.read(0, written * BLOCK)).equals(all), 'B reads every write back');
    t.true((await exportRaw(p.a, base)).equals(snap), 'the base holds what the snapshot holds, the later writes are only in the new leaf');
    c.close();
    t.regex(readSmlog(p.b), new RegExp(`tapdisk-pause unpause: VDI ${V} unpaused on \\S+${V}\\.vhd after \\d+ ms paused`));

    // The established protocol in the database: paused around the plugin calls, B asked to pause then unpause.
    t.deepEqual(p.pluginRuns, ['pause -> True', 'unpause -> True']);
    const plugin = p.xapi.callsOf('host.call_plugin');
    t.deepEqual(plugin.map((x) => [x.params[0], x.params[2]]), [[OTHER_HOST_REF, 'pause'], [OTHER_HOST_REF, 'unpause']]);
    const methods = p.xapi.calls.map((x) => `${x.method}${x.method.includes('sm_config') ? ` ${String(x.params[1])}` : ''}`);
    t.true(methods.indexOf('VDI.add_to_sm_config paused') < methods.indexOf('host.call_plugin'));
    t.is(methods.at(-1), 'VDI.remove_from_sm_config paused');
    t.false('paused' in (p.xapi.vdiByUuid(V)!.sm_config as Record<string, string>), 'paused is gone');
    t.regex(readSmlog(p.a), new RegExp(`VDI ${V} is active on host ${p.b.hostId}: paused there through the toolstack`));

    await p.onB('vdi_deactivate', vdiArgs(V));
    await p.onB('vdi_detach', vdiArgs(V));
    t.deepEqual([...activations(p.a).keys()], []);
  });
});

test('A clones and resizes a VDI B serves: B is paused each time and serves the changed chain after', async (t) => {
  await withPool(async (p) => {
    const { uuid: V } = (await xml(p.a, 'vdi_create', { args: createArgs(8 * MiB) })) as { uuid: string };
    await activeOnB(p, V);
    let c = await openNbd(p.b, V);
    await c.write(MiB, pattern(9, MiB));
    const { uuid: C } = (await xml(p.a, 'vdi_clone', vdiArgs(V))) as { uuid: string };
    t.true((await exportRaw(p.a, C)).subarray(MiB, 2 * MiB).equals(pattern(9, MiB)), 'the clone holds the acknowledged write');
    await c.write(3 * MiB, pattern(10, MiB));
    t.true((await exportRaw(p.a, C)).subarray(3 * MiB, 4 * MiB).equals(Buffer.alloc(MiB)), "B's later write is not in the clone");
    c.close();

    await xml(p.a, 'vdi_resize', vdiArgs(V, [String(16 * MiB)]));
    t.is((await readTree(p.a)).get(V)!.virtualSize, 16 * MiB);
    c = await openNbd(p.b, V);
    await c.write(12 * MiB, pattern(11, MiB));
    t.true((await c.read(MiB, MiB)).equals(pattern(9, MiB)) && (await c.read(12 * MiB, MiB)).equals(pattern(11, MiB)), 'B serves the grown leaf');
    c.close();
    t.deepEqual(p.pluginRuns, ['pause -> True', 'unpause -> True', 'pause -> True', 'unpause -> True']);
    await p.onB('vdi_deactivate', vdiArgs(V));
    await p.onB('vdi_detach', vdiArgs(V));
  });
});

test('a VDI active on B that the toolstack does not record as served there is still refused (24), nothing changed', async (t) => {
  await withPool(async (p) => {
    const { uuid: V } = (await xml(p.a, 'vdi_create', { args: createArgs(8 * MiB) })) as { uuid: string };
    // B activates it without a session: standalone there, so xapi has no host_ key for B.
    await p.onB('vdi_attach', { ...vdiArgs(V, ['true']), session_ref: '' });
    await p.onB('vdi_activate', { ...vdiArgs(V, ['true']), session_ref: '' });
    t.is(activations(p.a).get(V)?.host, p.b.hostId);
    t.deepEqual(p.xapi.vdiByUuid(V)!.sm_config, {});
    const before = (await readTree(p.a)).size;
    for (const verb of ['vdi_snapshot', 'vdi_clone']) {
      const r = await callDriver(verb, request(p.a, verb, vdiArgs(V)), p.a.env);
      t.like(r.response, { kind: 'fault', faultCode: 24 });
      if (r.response.kind === 'fault') t.regex(r.response.faultString, /which the toolstack does not record as serving it/);
    }
    t.is((await readTree(p.a)).size, before, 'no image made');
    t.deepEqual(p.pluginRuns, [], 'no host was asked to pause');
    await p.onB('vdi_deactivate', { ...vdiArgs(V), session_ref: '' });
    await p.onB('vdi_detach', { ...vdiArgs(V), session_ref: '' });
  });
});

test("B's vdi_deactivate waits while the master holds the VDI paused, and goes on once it is unpaused", async (t) => {
  await withPool(async (p) => {
    const { uuid: V } = (await xml(p.a, 'vdi_create', { args: createArgs(8 * MiB) })) as { uuid: string };
    await activeOnB(p, V);
    // The master's pause in the database, as its withPaused sets it before asking the hosts.
    const sm = p.xapi.vdiByUuid(V)!.sm_config as Record<string, string>;
    sm.paused = 'true';
    let done = false;
    const deactivate = p.onB('vdi_deactivate', vdiArgs(V)).finally(() => (done = true));
    const waits = new RegExp(`XenAPI: VDI ${V} is paused: deactivation waits`);
    await waitFor('the deactivation to wait', () => waits.test(readSmlog(p.b)) || undefined, 60_000);
    await sleep(2500); // more than one try (1 s apart)
    t.false(done, 'not deactivated while paused');
    t.true(isServed(p.b, V), 'B still serves the VDI for the master to unpause');
    delete sm.paused;
    await deactivate;
    t.false(isServed(p.b, V), 'deactivated once unpaused');
    t.false(`host_${OTHER_HOST_REF}` in sm, "B's tag goes with the deactivate");
    await p.onB('vdi_detach', vdiArgs(V));
  });
});
