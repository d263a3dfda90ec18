// The collector killed (SIGKILL, by SM_FAULT) at every one of its fault points,
// then recovered as a host would: (sr_scan, then) `sm-gc -g`. Right after the
// kill every VDI already reads as the model; after recovery the work is done,
// every image passes check, nothing is leaked and metadata matches the images.
// Each round builds fresh trees in the same SR, so it also proves the SR stays
// usable (snapshots, deletes, GC) after every crash.
import test, { type ExecutionContext } from 'ava';
import { MiB } from '../helpers/model.js';
import { gc, makeSmEnv, readSmlog, smGc, type SmEnv } from '../helpers/sm.js';
import { checkProblems, diffVdi, hostLeftovers, journals, shapeOf, readTree } from '../helpers/sr-state.js';
import { World } from '../helpers/world.js';

interface GcScenario {
  /** Builds this round's trees in the SR; returns the names the collected shape is read from. */
  build(w: World, round: number): Promise<string[]>;
  /** The shape of the trees holding those VDIs once collected. */
  collected(round: number): string;
  /** The step killed is journaled (garbage deletion is not: it is only ever half done, never wrong). */
  journaled: boolean;
}

/**
 * Two new trees: X (coalesce: base B1 under a run of two base copies, B2 and
 * B3, each the only child of the one below, B3 with two children, X and its
 * snapshot; B2 and B3 overlap, so the run must be copied in order) and L
 * (leaf-coalesce: L alone under its base copy).
 */
const coalesceTrees: GcScenario = {
  async build(w, round) {
    const x = `X${round}`;
    const l = `L${round}`;
    await w.create(x, 12 * MiB);
    await w.fill(x, 0, 3 * MiB);
    await w.snapshot(x, `${x}s1`);
    await w.fill(x, 2 * MiB + 512, 3 * MiB);
    await w.snapshot(x, `${x}s0`);
    await w.fill(x, 3 * MiB - 1024, MiB + 4096);
    await w.snapshot(x, `${x}s2`);
    await w.fill(x, 7 * MiB, MiB);
    await w.delete(`${x}s1`);
    await w.delete(`${x}s0`);
    await w.create(l, 8 * MiB);
    await w.fill(l, MiB, 2 * MiB);
    await w.snapshot(l, `${l}s`);
    await w.fill(l, 2 * MiB, 2 * MiB);
    await w.delete(`${l}s`);
    return [x, `${x}s2`, l];
  },
  collected: (round) => `*?(X${round},X${round}s2) L${round}`,
  journaled: true,
};

/**
 * Garbage: a hidden subtree of three base copies (G, two snapshots, all deleted)
 * beside a VDI K that stays, alone under its own base copy.
 */
/** Garbage: a hidden subtree of three base copies (G and its three snapshots, all deleted); beside it K, which stays. */
const garbageTree: GcScenario = {
  async build(w, round) {
    const g = `G${round}`;
    const k = `K${round}`;
    await w.create(k, 4 * MiB);
    await w.fill(k, MiB, MiB);
    await w.create(g, 8 * MiB);
    for (const s of [1, 2, 3]) {
      await w.fill(g, s * MiB, MiB);
      await w.snapshot(g, `${g}s${s}`);
    }
    for (const name of [g, `${g}s1`, `${g}s2`, `${g}s3`]) await w.delete(name);
    return [k];
  },
  collected: (round) => `K${round}`,
  journaled: false,
};

/** Every VDI reads as the model and every image passes check (journals may remain). */
async function assertReadable(t: ExecutionContext, w: World, ctx: SmEnv, what: string): Promise<void> {
  t.deepEqual(await checkProblems(ctx), [], `${what}: every image passes check`);
  const nodes = await readTree(ctx);
  for (const [u, model] of w.models) {
    t.true(nodes.has(u), `${what}: ${w.names[u]} has its image`);
    t.false(nodes.get(u)?.hidden ?? false, `${what}: ${w.names[u]} is visible`);
    t.is(await diffVdi(ctx, u, model), undefined, `${what}: data of ${w.names[u]}`);
  }
}

async function runGcFaults(t: ExecutionContext, scenario: GcScenario, points: string[]): Promise<void> {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx);
  let usable = '';
  try {
    for (const [round, point] of points.entries()) {
      const names = await scenario.build(w, round);
      if (round === 0) usable = names[0];
      const killed = await smGc(ctx, ['-g'], { ...ctx.env, SM_FAULT: point });
      t.is(killed.signal, 'SIGKILL', `${point}: the collector died by SIGKILL (exit ${killed.code}): ${readSmlog(ctx).split('\n').slice(-8).join('\n')}`);
      if (scenario.journaled) t.true(journals(ctx).length > 0, `${point}: a journal records the interrupted step`);
      // A crash at any instant loses nothing: the VDIs read right before any recovery.
      await assertReadable(t, w, ctx, `${point}, right after the kill`);

      if (round !== 0) await w.scan(); // a host scans first (it would start the GC there); round 0 goes straight to the GC
      await gc(ctx);
      t.deepEqual(journals(ctx), [], `${point}: recovered`);
      if (scenario.journaled) t.regex(readSmlog(ctx), /SMGC: \[\d+\] recovery: /, `${point}: the next run recovered the step`);
      const nodes = await readTree(ctx);
      const uuids = names.map((n) => w.uuid(n));
      const ofRound = new Map([...nodes].filter(([u]) => uuids.includes(u) || uuids.some((v) => nodes.get(v)?.parent === u)));
      t.is(shapeOf(ofRound, w.names), scenario.collected(round), `${point}: the trees of this round are collected`);
      await w.scan();
      await w.check(t, { scanned: true });
      t.deepEqual(hostLeftovers(ctx), [], `${point}: no lock or state file left behind`);
    }
    // Usable after all that: one more snapshot, delete, GC.
    await w.snapshot(usable, 'last');
    await w.fill(usable, 0, MiB);
    await w.delete('last');
    await gc(ctx);
    await w.scan();
    await w.check(t, { scanned: true });
  } finally {
    await w.close();
    await ctx.cleanup();
  }
}

test('coalesce killed at each fault point, then recovered', async (t) => {
  await runGcFaults(t, coalesceTrees, ['coalesce-journaled', 'coalesce-copied', 'relink-journaled', 'relink-child', 'relink-child:2', 'relink-done', 'relink-synced', 'coalesced-discarded']);
});

test('leaf-coalesce killed at each fault point, then recovered', async (t) => {
  await runGcFaults(t, coalesceTrees, ['leaf-journaled', 'leaf-copied', 'leaf-unhidden', 'leaf-renamed']);
});

test('garbage deletion killed between the removals of a hidden subtree, and between its record removals and their sync', async (t) => {
  await runGcFaults(t, garbageTree, ['garbage-removed', 'garbage-removed:2', 'records-dropped']);
});
