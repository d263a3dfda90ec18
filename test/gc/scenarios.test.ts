// The collector on real File SRs: trees built through the driver executable
// (SM_GC=off, so the test decides when the GC runs), then `sm-gc -u <sr> -g`.
// After each run: the expected tree shape, every VDI byte-identical to the
// model, every image passes check, metadata agrees, nothing stray is left.
// Each scenario runs twice: standalone, and with the stand-in xapi at the SR's
// XenAPI socket (xapi itself cannot run here), whose database must then equal
// what xapi would hold after every verb and every collection (world.ts).
import fs from 'node:fs';
import test, { type ExecutionContext } from 'ava';
import { MiB } from '../helpers/model.js';
import { readSmlog, smGc, smVhd, type SmEnv } from '../helpers/sm.js';
import { depthOf, diffVdi, imagePath, readTree, snapshotDir } from '../helpers/sr-state.js';
import { withWorld, type World } from '../helpers/world.js';

const GiB = 1024 * MiB;

async function hide(ctx: SmEnv, uuid: string): Promise<void> {
  const r = await smVhd(['set', '-n', imagePath(ctx, uuid), '-f', 'hidden', '-v', '1']);
  if (r.code !== 0) throw new Error(`sm-vhd set: ${r.stderr}`);
}

function scenario(title: string, body: (t: ExecutionContext, w: World, ctx: SmEnv) => Promise<void>): void {
  test(title, (t) => withWorld((w, ctx) => body(t, w, ctx)));
  test(`${title} [stand-in xapi]`, (t) => withWorld((w, ctx) => body(t, w, ctx), { xapi: t }));
}

scenario('(a) snapshots taken then deleted: the VDI becomes one image again', async (t, w, ctx) => {
  await w.create('V', 40 * MiB);
  await w.fill('V', 0, 6 * MiB);
  for (let i = 1; i <= 4; i++) {
    await w.snapshot('V', `S${i}`);
    await w.fill('V', i * 7 * MiB + 12345, 3 * MiB);
  }
  for (let i = 1; i <= 4; i++) await w.delete(`S${i}`);
  t.is(await w.shape(), '*?(*?(*?(*?(V))))', 'before: a chain of four hidden base copies');
  await w.check(t);
  await w.gc();
  t.is(await w.shape(), 'V');
  t.is(depthOf(await readTree(ctx), w.uuid('V')), 1);
  await w.check(t, { scanned: true });
});

scenario('(b) a clone: the shared base stays, everything else is coalesced', async (t, w, ctx) => {
  await w.create('V', 30 * MiB);
  await w.fill('V', MiB, 5 * MiB);
  await w.snapshot('V', 'S1');
  await w.fill('V', 8 * MiB, 2 * MiB);
  await w.delete('S1');
  await w.clone('V', 'C');
  await w.fill('V', 10 * MiB, 3 * MiB);
  await w.fill('C', 2 * MiB, 4 * MiB);
  await w.snapshot('V', 'S3');
  await w.fill('V', 20 * MiB + 999, MiB);
  await w.delete('S3');
  t.is(await w.shape(), '*?(*?(*?(V),C))');
  await w.gc();
  t.is(await w.shape(), '*?(C,V)', 'the base both VDIs share is all that is left under them');
  await w.check(t, { scanned: true });
  // Nothing more to do: a second run changes nothing.
  const before = snapshotDir(ctx.location);
  await w.gc();
  t.deepEqual(snapshotDir(ctx.location), before);
});

scenario('(c) hidden garbage: hidden leaves and all-hidden subtrees are deleted', async (t, w, ctx) => {
  await w.create('V', 16 * MiB);
  await w.fill('V', 0, 4 * MiB);
  await w.snapshot('V', 'S');
  await w.fill('V', 5 * MiB, MiB);
  await hide(ctx, w.uuid('S'));
  w.forget('S');
  await w.create('W', 16 * MiB);
  await w.fill('W', 0, 2 * MiB);
  await w.snapshot('W', 'WS');
  await w.delete('W');
  await hide(ctx, w.uuid('WS'));
  w.forget('WS');
  t.is(await w.shape(), '*?(*S,V) *?(*WS)');
  await w.gc();
  t.is(await w.shape(), 'V');
  const log = readSmlog(ctx);
  t.regex(log, /SMGC: \[\d+\] Found 3 VDIs for deletion:/);
  await w.check(t, { scanned: true });
});

scenario('(d) mixed trees in one SR', async (t, w, ctx) => {
  await w.create('P', 8 * MiB);
  await w.fill('P', MiB, 2 * MiB);
  // A chain whose middle snapshot is kept
  await w.create('A', 24 * MiB);
  await w.fill('A', 0, 3 * MiB);
  await w.snapshot('A', 'S1');
  await w.fill('A', 4 * MiB, 3 * MiB);
  await w.snapshot('A', 'S2');
  await w.fill('A', 8 * MiB, 3 * MiB);
  await w.snapshot('A', 'S3');
  await w.fill('A', 2 * MiB, 3 * MiB);
  await w.delete('S1');
  await w.delete('S3');
  // A clone whose origin is deleted
  await w.create('K', 8 * MiB);
  await w.fill('K', 0, MiB);
  await w.clone('K', 'KC');
  await w.fill('KC', 3 * MiB, MiB);
  await w.delete('K');
  // A VDI and its snapshot, both deleted: only a hidden base is left
  await w.create('G', 8 * MiB);
  await w.fill('G', 0, MiB);
  await w.snapshot('G', 'GS');
  await w.delete('G');
  await w.delete('GS');
  // A single snapshot (the old image itself) deleted while its child lives
  await w.create('D', 8 * MiB);
  await w.fill('D', 0, 2 * MiB);
  await w.snapshot('D', 'DS', 'single');
  await w.fill('D', MiB, 2 * MiB);
  await w.delete('DS');
  t.is(await w.shape(), '*? *?(*?(*?(A),S2)) *?(KC) *DS(D) P');
  await w.check(t);
  await w.gc();
  t.is(await w.shape(), '*?(A,S2) D KC P');
  await w.check(t, { scanned: true });
});

scenario('(e) a VDI grown beyond its base copy\'s BAT room is still coalesced', async (t, w, ctx) => {
  await w.create('R', 10 * MiB);
  await w.fill('R', 0, 3 * MiB);
  await w.snapshot('R', 'RS');
  await w.resize('R', 100 * GiB);
  await w.fill('R', 90 * GiB + 4096, 2 * MiB);
  await w.delete('RS');
  await w.gc();
  t.is(await w.shape(), 'R');
  t.is((await readTree(ctx)).get(w.uuid('R'))!.virtualSize, 100 * GiB);
  await w.check(t, { scanned: true });
});

scenario('(g) a single snapshot (the old image itself, visible) is never written into', async (t, w, ctx) => {
  await w.create('D', 12 * MiB);
  await w.fill('D', 0, 2 * MiB);
  await w.snapshot('D', 'DS', 'single');
  await w.fill('D', 3 * MiB, 2 * MiB);
  await w.snapshot('D', 'T');
  await w.fill('D', 6 * MiB, MiB);
  await w.delete('T');
  t.is(await w.shape(), 'DS(*?(D))');
  await w.gc();
  t.is(await w.shape(), 'DS(D)', 'D merged into its hidden parent, not the hidden parent into DS');
  await w.check(t, { scanned: true });
});

scenario('(f) an active hidden leaf is not garbage, nor are its ancestors; the GC still ends', async (t, w, ctx) => {
  await w.create('V', 8 * MiB);
  await w.fill('V', 0, 2 * MiB);
  const s = await w.snapshot('V', 'S');
  await w.delete('V');
  // S is in use (attached read-only and activated) when it becomes hidden.
  await w.s.call('vdi_attach', { vdi_uuid: s, vdi_location: s, args: ['false'] });
  await w.s.call('vdi_activate', { vdi_uuid: s, vdi_location: s, args: ['false'] });
  await hide(ctx, s);
  const model = w.models.get(s)!;
  w.forget('S');
  t.is(await w.shape(), '*?(*S)');
  const r = await smGc(ctx, ['-g'], ctx.env, 30_000);
  t.is(r.code, 0, r.stderr);
  t.is(r.signal, null, 'the GC ended by itself');
  t.is(await w.shape(), '*?(*S)', 'nothing under an active image was deleted');
  w.models.set(s, model);
  t.is(await diffVdi(ctx, s, model), undefined, 'the active image still reads as before');
  t.true(fs.existsSync(imagePath(ctx, s)));
});
