// A's collector relinks a chain host B serves, and B cannot refresh its
// datapath (pool-world.ts: the stand-in answers B's plugin with a failure).
// B's datapath then still reads through the coalesced image, so that image
// must stay: removed, its file would be gone under B (on NFS, stale handles;
// on LVM, extents handed to the next LV). The run ends saying so, with the
// relink's journal kept; the next run, with B answering again, refreshes B,
// removes the image and merges the leaf. B reads every write all along.
import test from 'ava';
import { MiB, pattern } from '../helpers/model.js';
import { openNbd } from '../helpers/nbd-vdi.js';
import { datapathPids, gc, readSmlog, smGc } from '../helpers/sm.js';
import { journals, readTree } from '../helpers/sr-state.js';
import { chainOnB, openImages, withPool } from './pool-world.js';

test('B cannot refresh after a relink: the coalesced image stays for its datapath, the journal waits; the next run refreshes B and finishes', async (t) => {
  await withPool(async (p) => {
    const { V, c, b1, b2 } = await chainOnB(p, 16 * MiB);

    p.refusing.add('refresh');
    p.pluginRuns.length = 0;
    const first = await smGc(p.a, ['-g']);
    t.not(first.code, 0, 'the run ends with an error: it could not finish the relink');
    t.deepEqual(p.pluginRuns, ['refresh -> refused'], 'B was asked to refresh, and could not');
    const tree = await readTree(p.a);
    t.is(tree.get(V)?.parent, b1, 'V is relinked onto b1');
    t.true(tree.has(b2), 'b2, which B still reads through, stays');
    t.true(journals(p.a).some((j) => j.startsWith('relink-')), 'the relink journal stays for the next run');
    t.regex(readSmlog(p.a), new RegExp(`${b2.slice(0, 8)} kept: not refreshed on the hosts serving`), 'SMlog says why');
    const [pid] = datapathPids(p.b.root);
    t.true(openImages(pid!, p.a.location).some((f) => f.includes(b2) && !f.endsWith('(deleted)')), "B's datapath holds b2, still in the SR");
    t.true((await c.read(0, MiB)).equals(pattern(1, MiB)), 'B reads its first write (in b1)');
    t.true((await c.read(2 * MiB, MiB)).equals(pattern(2, MiB)), 'and its second (in b2)');

    p.refusing.clear();
    p.pluginRuns.length = 0;
    await gc(p.a);
    t.deepEqual([...(await readTree(p.a)).keys()], [V], 'the next run finishes: one image left');
    t.deepEqual(journals(p.a), [], 'no journal left');
    t.is(p.pluginRuns[0], 'refresh -> True', 'B refreshed first, before b2 went');
    t.true((await c.read(0, MiB)).equals(pattern(1, MiB)), 'B reads its first write');
    t.true((await c.read(2 * MiB, MiB)).equals(pattern(2, MiB)), 'its second');
    t.true((await c.read(4 * MiB, MiB)).equals(pattern(3, MiB)), 'its third');
    t.deepEqual(openImages(pid!, p.a.location).filter((f) => f.endsWith('(deleted)')), [], 'B holds no removed image');
    c.close();
  });
});
