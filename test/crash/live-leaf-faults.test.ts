// The live leaf-coalesce killed at each of its steps: the collector (SIGKILL by
// SM_FAULT) while NBD clients keep writing the active VDI, and the datapath
// itself while the collector asks it what was written. Every acknowledged write
// stays (in the model), the datapath is unpaused by the next run (or, dead,
// cleaned up by the next verb and served again), every image passes check, and
// the next run finishes the work.
import test, { type ExecutionContext } from 'ava';
import { activate, deactivate, waitWrites, writeLoad } from '../helpers/live-load.js';
import { MiB } from '../helpers/model.js';
import { callVerb } from '../helpers/crash.js';
import { datapathPids, gc, makeSmEnv, readSmlog, sleep, smGc } from '../helpers/sm.js';
import { checkProblems, diffVdi, journals } from '../helpers/sr-state.js';
import { World, withWorld } from '../helpers/world.js';

const SIZE = 16 * MiB;

/** V alone under its base copy (its only snapshot deleted), active and written by two clients. */
async function liveCandidate(w: World, name: string) {
  const v = await w.create(name, SIZE);
  await w.fill(name, 0, 6 * MiB);
  await w.snapshot(name, `${name}s`);
  await w.fill(name, 6 * MiB, 2 * MiB);
  await w.delete(`${name}s`);
  await activate(w, v);
  const load = await writeLoad(w, v, SIZE, 2);
  await waitWrites(load, 20);
  return { v, load };
}

/** Points where the datapath is paused when the collector dies. */
const PAUSED = new Set(['live-leaf-paused', 'live-leaf-final-copied', 'leaf-renamed']);

async function killAt(t: ExecutionContext, w: World, point: string, round: number): Promise<void> {
  const ctx = w.ctx;
  const name = `V${round}`;
  const { v, load } = await liveCandidate(w, name);
  // A second round needs writes left over after the first: a small final limit (the clients keep writing) makes sure of it.
  const rounds = point === 'live-leaf-round:2' ? { SM_GC_LIVE_FINAL_MIB: '0.25' } : {};
  const killed = await smGc(ctx, ['-g'], { ...ctx.env, ...rounds, SM_FAULT: point });
  t.is(killed.signal, 'SIGKILL', `${point}: the collector died by SIGKILL (exit ${killed.code}): ${readSmlog(ctx).split('\n').slice(-6).join('\n')}`);
  t.true(journals(ctx).length > 0, `${point}: a journal records the interrupted step`);
  if (PAUSED.has(point)) {
    const n = load.writes;
    await sleep(300);
    t.is(load.writes, n, `${point}: the datapath was left paused (the clients wait)`);
    // Paused, nothing in flight: the images on disk read as every acknowledged write right now.
    t.deepEqual(await checkProblems(ctx), [], `${point}: every image passes check right after the kill`);
    t.is(await diffVdi(ctx, v, w.models.get(v)!), undefined, `${point}: ${name} reads as every acknowledged write right after the kill`);
  } else {
    await waitWrites(load, 10); // the clients never noticed
  }
  await gc(ctx);
  t.deepEqual(journals(ctx), [], `${point}: recovered`);
  t.regex(readSmlog(ctx), /SMGC: \[\d+\] recovery: (live )?leaf-coalesce of \S+ (abandoned|was complete)/, `${point}: the next run recovered the step`);
  await waitWrites(load, 20); // unpaused: the clients go on
  await load.stop();
  t.deepEqual(load.errors, [], `${point}: no client saw an I/O error`);
  const shape = await w.shape();
  t.true(shape.split(' ').includes(name), `${point}: ${name} ends as one image (${shape})`);
  t.true((await load.conns[0]!.read(0, SIZE)).equals(w.models.get(v)!.read(0, SIZE)), `${point}: reads as every acknowledged write`);
  load.close();
  await deactivate(w, v);
  await w.check(t);
}

test('live leaf-coalesce: the collector killed at each step (rounds, paused, mid-swap), recovered by the next run, exact', async (t) => {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx);
  try {
    const points = ['leaf-journaled', 'live-leaf-round', 'live-leaf-round:2', 'leaf-unhidden', 'live-leaf-paused', 'live-leaf-final-copied', 'leaf-renamed', 'live-leaf-unpaused'];
    for (const [round, point] of points.entries()) await killAt(t, w, point, round);
  } finally {
    await w.close();
    await ctx.cleanup();
  }
});

test('live leaf-coalesce: the datapath killed while the collector asks it what was written; the collector gives up, the next verb cleans up, the VDI is served again and coalesced', async (t) => {
  await withWorld(async (w, ctx) => {
    const v = await w.create('V', SIZE);
    await w.fill('V', 0, 6 * MiB);
    await w.snapshot('V', 'S');
    await w.fill('V', 6 * MiB, 2 * MiB);
    await w.delete('S');
    await w.s.call('vdi_attach', { vdi_uuid: v, vdi_location: v, args: ['true'] });
    // Activated by a driver whose environment the datapath inherits: it dies at its first dirty-since.
    const act = await callVerb(w, 'vdi_activate', { vdi_uuid: v, vdi_location: v, args: ['true'] }, { ...ctx.env, SM_FAULT: 'datapath-dirty-since' });
    t.is(act.code, 0, act.stderr);
    const load = await writeLoad(w, v, SIZE, 2);
    await waitWrites(load, 40);
    await load.stop(); // acknowledged writes only: a write cut short by the kill would be in neither state for sure
    load.close();
    const r = await gc(ctx);
    t.is(r.code, 0);
    t.regex(readSmlog(ctx), /Live leaf-coalesce of [0-9a-f]{8} given up: it failed: .*unreachable/);
    t.deepEqual(datapathPids(ctx.root), [], 'the datapath died');
    t.deepEqual(journals(ctx), [], 'the collector closed its journal');
    t.is(await w.shape(), '*?(V)', 'the chain is as before');
    // The next verb on the VDI cleans up after the dead datapath; then it is served again.
    await deactivate(w, v);
    await w.check(t);
    await activate(w, v);
    const again = await writeLoad(w, v, SIZE, 2);
    await waitWrites(again, 20);
    await gc(ctx);
    await again.stop();
    t.deepEqual(again.errors, [], 'no client error on the restarted datapath');
    t.is(await w.shape(), 'V', 'coalesced live on the restarted datapath');
    t.true((await again.conns[0]!.read(0, SIZE)).equals(w.models.get(v)!.read(0, SIZE)), 'reads as every acknowledged write');
    again.close();
    await deactivate(w, v);
    await w.check(t);
  });
});
