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

/**
 * Two new trees: X (coalesce: base B1 whose only child B2 has two children, X
 * and its snapshot) and L (leaf-coalesce: L alone under its base copy).
 */
async function buildTrees(w: World, round: number): Promise<{ x: string; l: string }> {
  const x = `X${round}`;
  const l = `L${round}`;
  await w.create(x, 12 * MiB);
  await w.fill(x, 0, 3 * MiB);
  await w.snapshot(x, `${x}s1`);
  await w.fill(x, 2 * MiB + 512, 3 * MiB);
  await w.snapshot(x, `${x}s2`);
  await w.fill(x, 7 * MiB, MiB);
  await w.delete(`${x}s1`);
  await w.create(l, 8 * MiB);
  await w.fill(l, MiB, 2 * MiB);
  await w.snapshot(l, `${l}s`);
  await w.fill(l, 2 * MiB, 2 * MiB);
  await w.delete(`${l}s`);
  return { x, l };
}

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

async function runGcFaults(t: ExecutionContext, points: string[]): Promise<void> {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx);
  try {
    for (const [round, point] of points.entries()) {
      const { x, l } = await buildTrees(w, round);
      const killed = await smGc(ctx, ['-g'], { ...ctx.env, SM_FAULT: point });
      t.is(killed.signal, 'SIGKILL', `${point}: the collector died by SIGKILL (exit ${killed.code}): ${readSmlog(ctx).split('\n').slice(-8).join('\n')}`);
      t.true(journals(ctx).length > 0, `${point}: a journal records the interrupted step`);
      // A crash at any instant loses nothing: the VDIs read right before any recovery.
      await assertReadable(t, w, ctx, `${point}, right after the kill`);

      if (round !== 0) await w.scan(); // a host scans first (it would start the GC there); round 0 goes straight to the GC
      await gc(ctx);
      t.deepEqual(journals(ctx), [], `${point}: recovered`);
      t.regex(readSmlog(ctx), /SMGC: \[\d+\] recovery: /, `${point}: the next run recovered the step`);
      const nodes = await readTree(ctx);
      const round_ = new Map([...nodes].filter(([u]) => [w.uuid(x), w.uuid(l), w.uuid(`${x}s2`)].includes(u) || nodes.get(w.uuid(x))?.parent === u));
      t.is(shapeOf(round_, w.names), `*?(${x},${x}s2) ${l}`, `${point}: the trees of this round are collected`);
      await w.scan();
      await w.check(t, { scanned: true });
      t.deepEqual(hostLeftovers(ctx), [], `${point}: no lock or state file left behind`);
    }
    // Usable after all that: one more snapshot, delete, GC.
    await w.snapshot('X0', 'last');
    await w.fill('X0', 0, MiB);
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
  await runGcFaults(t, ['coalesce-journaled', 'coalesce-copied', 'relink-journaled', 'relink-child', 'relink-child:2', 'relink-done']);
});

test('leaf-coalesce killed at each fault point, then recovered', async (t) => {
  await runGcFaults(t, ['leaf-journaled', 'leaf-copied', 'leaf-unhidden', 'leaf-renamed']);
});
