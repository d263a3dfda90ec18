// The collector on live chains: VDIs stay active (served by the datapath, written
// by real NBD clients through their sockets) while the GC coalesces the nodes
// under them and leaf-coalesces them. Every acknowledged write is in the model;
// the clients must see no error, the VDIs end as short chains, the images pass check.
import fs from 'node:fs';
import test from 'ava';
import { MiB } from '../helpers/model.js';
import { activate, deactivate, liveLines, waitWrites, writeLoad } from '../helpers/live-load.js';
import { datapathPids, gc, readSmlog } from '../helpers/sm.js';
import { depthOf, readTree } from '../helpers/sr-state.js';
import { withWorld } from '../helpers/world.js';

test('the seed scenario, live: a VDI written through NBD, its only snapshot deleted, sm-gc -g: one image, never deactivated, exact bytes', async (t) => {
  await withWorld(async (w, ctx) => {
    const size = 32 * MiB;
    const V = await w.create('V', size);
    await w.fill('V', 0, 12 * MiB);
    await activate(w, V);
    const load = await writeLoad(w, V, size, 3);
    await waitWrites(load, 50);
    await w.snapshot('V', 'S');
    await waitWrites(load, 50);
    await w.delete('S');
    await waitWrites(load, 50);
    const before = load.writes;
    await gc(ctx);
    const during = load.writes - before;
    await load.stop();
    t.deepEqual(load.errors, [], 'no client saw an I/O error');
    t.true(during > 0, `the clients kept writing during the GC (${during} writes)`);
    const log = readSmlog(ctx);
    t.log(liveLines(log));
    t.is(await w.shape(), 'V', 'the VDI is one image (depth 1)');
    t.regex(log, /Live leaf-coalesce of [0-9a-f]{8}, round 0: the whole leaf, [\d.]+ MiB in \d+ ms \([\d.]+ MiB\/s\)/);
    t.regex(log, new RegExp(`VDI ${V}: datapath paused for a live leaf-coalesce \\(.*synced only what the file lacked\\)`));
    t.regex(log, new RegExp(`VDI ${V}: datapath unpaused on \\S+; paused \\d+ ms`));
    t.regex(log, /Live leaf-coalesce of [0-9a-f]{8}: final step \([\d.]+ MiB in \d+ blocks\) and swap took \d+ ms paused/);
    // A final copy (there is none when nothing was written since the last round) goes through the copy program started before the pause.
    const finalCopy = /Live leaf-coalesce of [0-9a-f]{8}, final step: copied \d+ sectors \([\d.]+ MiB\) in \d+ ms \(([^)]*)\)/.exec(log);
    if (finalCopy) t.regex(finalCopy[1]!, /^copy program \d+ ms, fsync \d+ ms$/);
    t.notRegex(log, /Live leaf-coalesce of [0-9a-f]{8} given up/);
    // Still served, never deactivated: the same connections read what the model says.
    const c = load.conns[0]!;
    t.true((await c.read(0, size)).equals(w.models.get(V)!.read(0, size)), 'reads as every acknowledged write, through the same connection');
    load.close();
    await deactivate(w, V);
    await w.check(t);
  });
});

test('a VDI under steady random writes while snapshots are taken and deleted and the GC runs: chain depth never above 3, exact bytes, no client error', async (t) => {
  await withWorld(async (w, ctx) => {
    const size = 24 * MiB;
    const V = await w.create('V', size);
    await w.fill('V', 0, 8 * MiB);
    await activate(w, V);
    // Steady, as a running VM writes (4 x 250 writes/s of 4 KiB: 4 MiB/s): slower than the copy, so the
    // chain must end as one image. A writer faster than the copy is the next test's case.
    const load = await writeLoad(w, V, size, 4, 250);
    const depths: number[] = [];
    for (let i = 0; i < 4; i++) {
      await waitWrites(load, 30);
      await w.snapshot('V', `S${i}`);
      await waitWrites(load, 30);
      if (i % 2 === 1) await w.snapshot('V', `T${i}`); // two snapshots: the next GC has a node to coalesce under the active leaf
      await w.delete(`S${i}`);
      if (i % 2 === 1) await w.delete(`T${i}`);
      await waitWrites(load, 30);
      await gc(ctx);
      depths.push(depthOf(await readTree(ctx), V));
    }
    await load.stop();
    t.log(liveLines(readSmlog(ctx)));
    t.deepEqual(load.errors, [], 'no client saw an I/O error');
    t.true(depths.every((d) => d <= 3), `chain depth after each GC: ${depths.join(', ')}`);
    t.is(depths.at(-1), 1, 'the last GC left one image');
    t.true((await load.conns[1]!.read(0, size)).equals(w.models.get(V)!.read(0, size)), 'reads as every acknowledged write');
    load.close();
    await deactivate(w, V);
    await w.check(t);
  });
});

test('a VDI written faster than the copy: the GC gives up after its rounds, says why, and the chain reads the same', async (t) => {
  await withWorld(async (w, ctx) => {
    const size = 32 * MiB;
    const V = await w.create('V', size);
    await w.fill('V', 0, 4 * MiB);
    await activate(w, V);
    await w.snapshot('V', 'S');
    await w.delete('S');
    const load = await writeLoad(w, V, size, 4);
    await waitWrites(load, 20);
    // No round may end with anything left over, and no round after the first (the whole leaf): its copy
    // takes long enough to always find blocks written meanwhile. (A later round can be a few ms long, now
    // that dirty-since need not flush, and four writers starved of CPU may then write nothing in it.)
    const r = await gc({ ...ctx, env: { ...ctx.env, SM_GC_LIVE_FINAL_MIB: '0', SM_GC_LIVE_ROUNDS: '0', SM_GC_LIVE_PAUSES: '2' } });
    t.is(r.code, 0);
    await load.stop();
    t.deepEqual(load.errors, [], 'no client saw an I/O error');
    // Outrun in the rounds, or by what was written between the last round and each pause (two tried): either way it says so.
    const log = readSmlog(ctx);
    t.regex(
      log,
      /Live leaf-coalesce of [0-9a-f]{8} given up: (the VDI is written faster than it is copied: after 0 rounds [\d.]+ MiB were written again|[\d.]+ MiB were written just before pause 2, more than the 0\.0 MiB a pause may copy; the next run tries again)/,
    );
    if (log.includes('before pause 2')) t.regex(log, /[\d.]+ MiB were written just before pause 1, more than the 0\.0 MiB a pause may copy: unpaused, one more round, then pause 2 of at most 2/);
    t.is(await w.shape(), '*?(V)', 'the chain is as before');
    t.true((await load.conns[0]!.read(0, size)).equals(w.models.get(V)!.read(0, size)), 'reads as every acknowledged write');
    load.close();
    await deactivate(w, V);
    await w.check(t);
  });
});

test('a coalesce under a VDI active here that reads through the node from further down: the relink pauses it too, and its datapath keeps no removed image open', async (t) => {
  await withWorld(async (w, ctx) => {
    const size = 16 * MiB;
    const V = await w.create('V', size);
    await w.fill('V', 0, 4 * MiB);
    await w.snapshot('V', 'A');
    await w.fill('V', 4 * MiB, 2 * MiB);
    await w.snapshot('V', 'B');
    await w.fill('V', 6 * MiB, 2 * MiB);
    await w.snapshot('V', 'S', 'single'); // S is V's old image, visible: V reads through it into the base copies
    await w.delete('A');
    await w.delete('B');
    t.is(await w.shape(), '*?(*?(S(V)))', 'two base copies, the upper one the only child of the lower');
    await activate(w, V);
    const load = await writeLoad(w, V, size, 2);
    await waitWrites(load, 30);
    await gc(ctx);
    await waitWrites(load, 30);
    await load.stop();
    t.deepEqual(load.errors, [], 'no client saw an I/O error');
    t.is(await w.shape(), '*?(S(V))', 'the upper base copy was coalesced into the lower one and removed');
    t.regex(readSmlog(ctx), new RegExp(`SMGC: \\[\\d+\\] VDI ${V}: datapath paused for a relink`), 'V, a grandchild of the node removed, was paused');
    const [pid] = datapathPids(ctx.root);
    const held = fs.readdirSync(`/proc/${pid}/fd`).map((fd) => fs.readlinkSync(`/proc/${pid}/fd/${fd}`, 'utf8')).filter((l) => l.endsWith('(deleted)'));
    t.deepEqual(held, [], 'the datapath holds no removed file open');
    t.true((await load.conns[0]!.read(0, size)).equals(w.models.get(V)!.read(0, size)), 'reads as every acknowledged write');
    load.close();
    await deactivate(w, V);
    await w.check(t);
  });
});
