// The collector on the master (host A) works on a chain host B serves, through
// the toolstack (pool-world.ts: the stand-in runs B's real tapdisk-pause
// plugin): the relink tags the VDI `relinking` and B refreshes its datapath
// before the coalesced image goes; the leaf-coalesce holds it `paused` on B
// for the merge. B's writer sees no error and reads every acknowledged write,
// and B's datapath holds no removed image open afterwards.
import test from 'ava';
import { MiB, pattern } from '../helpers/model.js';
import { openNbd } from '../helpers/nbd-vdi.js';
import { datapathPids, gc, readSmlog, waitFor, xml } from '../helpers/sm.js';
import { readTree } from '../helpers/sr-state.js';
import { chainOnB, createOnA, openImages, OTHER_HOST_REF, vdiArgs, withPool } from './pool-world.js';

const BLOCK = 64 * 1024;

test("A's GC relinks and leaf-coalesces a chain B writes to: B refreshed, then paused for the merge, through the plugin; no write lost", async (t) => {
  await withPool(async (p) => {
    // V over b2 over b1, each holding some of the data: b2 is coalesced into b1 (V relinked), then V into b1.
    const { V, c, b1 } = await chainOnB(p, 32 * MiB);
    t.truthy(b1, 'a chain of three: V, b2, b1');
    p.pluginRuns.length = 0;
    p.xapi.calls.length = 0;

    // A writer on B all through the GC run: one write at a time into its own region.
    let acked = 0;
    let stop = false;
    const writer = (async () => {
      for (let i = 0; !stop && i < 128; i++) {
        await c.write(8 * MiB + i * BLOCK, pattern(100 + i, BLOCK));
        acked = i + 1;
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    await waitFor('the writer to be writing', () => acked >= 3 || undefined);
    await gc(p.a);
    stop = true;
    await writer; // rejects on any error B's client saw

    const after = await readTree(p.a);
    t.deepEqual([...after.keys()], [V], 'the chain is one image: relinked, then leaf-coalesced');
    t.deepEqual(p.pluginRuns, ['refresh -> True', 'pause -> True', 'unpause -> True'], 'B refreshed after the relink, paused around the merge');
    const plugin = p.xapi.callsOf('host.call_plugin');
    t.true(plugin.every((x) => x.params[0] === OTHER_HOST_REF), 'only B is asked: A pauses its own datapath');
    t.deepEqual(
      plugin.map((x) => `${String(x.params[2])} failfast=${(x.params[3] as Record<string, string>).failfast}`),
      ['refresh failfast=False', 'pause failfast=True', 'unpause failfast=True'],
      'the merge asks B failfast, as the established live leaf-coalesce',
    );
    const tags = p.xapi.calls
      .filter((x) => (x.method.endsWith('_sm_config') && ['relinking', 'paused'].includes(String(x.params[1]))) || x.method === 'host.call_plugin')
      .map((x) => (x.method === 'host.call_plugin' ? `plugin ${String(x.params[2])}` : `${x.method.slice(4)} ${String(x.params[1])}`));
    t.deepEqual(
      tags.filter((x, i) => tags.indexOf(x) === i),
      ['remove_from_sm_config relinking', 'add_to_sm_config relinking', 'plugin refresh', 'add_to_sm_config paused', 'plugin pause', 'plugin unpause', 'remove_from_sm_config paused'],
      'relinking set before and cleared before the refresh; paused set around the merge',
    );
    const sm = p.xapi.vdiByUuid(V)!.sm_config as Record<string, string>;
    t.false('relinking' in sm || 'paused' in sm, 'no tag left');
    t.is(sm[`host_${OTHER_HOST_REF}`], 'RW', "B's tag stays");

    // Every acknowledged write reads back on B, on the same connection, and B writes on.
    t.true((await c.read(0, MiB)).equals(pattern(1, MiB)));
    t.true((await c.read(2 * MiB, MiB)).equals(pattern(2, MiB)));
    t.true((await c.read(4 * MiB, MiB)).equals(pattern(3, MiB)));
    const all = Buffer.concat(Array.from({ length: acked }, (_, i) => pattern(100 + i, BLOCK)));
    t.true((await c.read(8 * MiB, acked * BLOCK)).equals(all), `the ${acked} writes made during the GC read back`);
    await c.write(20 * MiB, pattern(7, MiB));
    t.true((await c.read(20 * MiB, MiB)).equals(pattern(7, MiB)));
    c.close();

    // B's datapath reopened the chain as it is now: it holds no removed image.
    const [pid] = datapathPids(p.b.root);
    const open = openImages(pid!, p.a.location);
    t.true(open.length > 0, `B's datapath holds the VDI's image: ${open.join(', ')}`);
    t.deepEqual(open.filter((f) => f.endsWith('(deleted)')), [], 'no image the GC removed is still open on B');
    const log = readSmlog(p.b);
    t.regex(log, new RegExp(`tapdisk-pause refresh: VDI ${V} unpaused`));
    t.regex(log, new RegExp(`tapdisk-pause unpause: VDI ${V} unpaused`));
    t.regex(readSmlog(p.a), new RegExp(`Leaf-coalescing ${V.slice(0, 8)} into \\*${b1.slice(0, 8)} while host ${p.b.hostId} holds it paused`));

    await p.onB('vdi_deactivate', vdiArgs(V));
    await p.onB('vdi_detach', vdiArgs(V));
  });
});

test("a leaf B serves that the toolstack does not record as B's is skipped by A's GC, as standalone", async (t) => {
  await withPool(async (p) => {
    const V = await createOnA(p, 8 * MiB);
    await p.onB('vdi_attach', { ...vdiArgs(V, ['true']), session_ref: '' });
    await p.onB('vdi_activate', { ...vdiArgs(V, ['true']), session_ref: '' });
    const c = await openNbd(p.b, V);
    await c.write(0, pattern(1, MiB));
    c.close();
    await p.onB('vdi_deactivate', { ...vdiArgs(V), session_ref: '' });
    const { uuid: S } = (await xml(p.a, 'vdi_snapshot', vdiArgs(V))) as { uuid: string };
    await xml(p.a, 'vdi_delete', vdiArgs(S));
    await p.onB('vdi_activate', { ...vdiArgs(V, ['true']), session_ref: '' });
    await gc(p.a);
    t.is((await readTree(p.a)).size, 2, 'V keeps its parent');
    t.regex(readSmlog(p.a), new RegExp(`Leaf-coalesce of ${V.slice(0, 8)}\\S* skipped: the VDI is active on host ${p.b.hostId}, which the toolstack does not record as serving it`));
    t.deepEqual(p.pluginRuns, []);
    await p.onB('vdi_deactivate', { ...vdiArgs(V), session_ref: '' });
    await p.onB('vdi_detach', { ...vdiArgs(V), session_ref: '' });
  });
});
