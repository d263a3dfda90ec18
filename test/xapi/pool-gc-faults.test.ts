// A's collector killed (SIGKILL, by SM_FAULT) at each step of its work on a
// chain host B serves through the toolstack (pool-world.ts): with V tagged
// `relinking` and B not yet refreshed, after the coalesced image went, and
// with B held paused for the leaf-coalesce (copied, unhidden, renamed). The
// next run (as sr_scan or the next kick starts it) unpauses what the killed
// one left paused, finishes the work, and clears every tag; B then reads every
// write it made, holds no removed image, and writes on.
import test from 'ava';
import { MiB, pattern } from '../helpers/model.js';
import { openNbd } from '../helpers/nbd-vdi.js';
import { datapathPids, gc, smGc, xml } from '../helpers/sm.js';
import { journals, readTree } from '../helpers/sr-state.js';
import { activeOnB, createOnA, openImages, twoDeletedSnapshots, vdiArgs, withPool } from './pool-world.js';

const POINTS = ['relink-done', 'coalesced-discarded', 'leaf-copied', 'leaf-unhidden', 'leaf-renamed'];

test("A's GC killed at each step on B's chain: the next run unpauses B, finishes, clears the tags; B's data is whole", async (t) => {
  await withPool(async (p) => {
    for (const point of POINTS) {
      const V = await createOnA(p, 16 * MiB);
      await activeOnB(p, V);
      const c = await openNbd(p.b, V);
      await twoDeletedSnapshots(p, c, V);
      p.pluginRuns.length = 0;

      const killed = await smGc(p.a, ['-g'], { ...p.a.env, SM_FAULT: point });
      t.is(killed.signal, 'SIGKILL', `${point}: the GC was killed there`);
      const sm = () => p.xapi.vdiByUuid(V)!.sm_config as Record<string, string>;
      const left = Object.keys(sm()).filter((k) => k === 'paused' || k === 'relinking');
      t.log(`${point}: left ${left.join(', ') || 'no tag'}, ${journals(p.a).length} journal(s); plugin ${p.pluginRuns.join(', ')}`);
      if (point.startsWith('leaf-')) t.deepEqual(left, ['paused'], `${point}: B was left paused`);
      if (point === 'relink-done') t.deepEqual(left, ['relinking'], `${point}: V was left relinking`);

      await gc(p.a);
      t.deepEqual([...(await readTree(p.a)).keys()], [V], `${point}: the chain is one image after the next run`);
      t.deepEqual(Object.keys(sm()).filter((k) => k === 'paused' || k === 'relinking'), [], `${point}: no tag left`);
      t.deepEqual(journals(p.a), [], `${point}: no journal left`);
      t.true((await c.read(0, MiB)).equals(pattern(1, MiB)), `${point}: B reads its first write`);
      t.true((await c.read(2 * MiB, MiB)).equals(pattern(2, MiB)), `${point}: and its second`);
      t.true((await c.read(4 * MiB, MiB)).equals(pattern(3, MiB)), `${point}: and its third`);
      await c.write(6 * MiB, pattern(4, MiB));
      t.true((await c.read(6 * MiB, MiB)).equals(pattern(4, MiB)), `${point}: B writes on`);
      c.close();
      const [pid] = datapathPids(p.b.root);
      t.deepEqual(openImages(pid!, p.a.location).filter((f) => f.endsWith('(deleted)')), [], `${point}: B holds no removed image`);
      await p.onB('vdi_deactivate', vdiArgs(V));
      await p.onB('vdi_detach', vdiArgs(V));
      await xml(p.a, 'vdi_delete', vdiArgs(V));
      await gc(p.a);
    }
  });
});
