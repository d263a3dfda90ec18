// A driver killed (SIGKILL, by SM_FAULT) at every fault point of the SR layer,
// then recovered as a host would (sr_attach or sr_scan). Afterwards every VDI
// reads as the model says (create and snapshot roll back unless their metadata
// was committed, delete completes, a resize within the BAT room is rolled forward, a rewrite is before or after), every image
// passes check, nothing is leaked, metadata matches the images, and the SR is
// usable: a further snapshot and a GC succeed.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { encodeMethodCall } from '../../lib/smapi/index.js';
import { createCase, on, resizeOutcome, runFaults, snapshotCase, V_SIZE, vdiArgs, withSr, type FaultCase } from '../helpers/crash.js';
import { MiB } from '../helpers/model.js';
import { FILE_SR, makeSmEnv, request, sleep } from '../helpers/sm.js';
import { diffVdi, readTree } from '../helpers/sr-state.js';
import { World } from '../helpers/world.js';

test('vdi_create killed at each fault point: rolled back unless committed', async (t) => {
  await withSr((w) =>
    runFaults(t, w, [
      createCase('create-journaled', false),
      createCase('create-image-written', false),
      createCase('metadata-temp-written', false),
      createCase('metadata-renamed', true),
      createCase('create-metadata-written', true),
    ]),
  );
});

test('vdi_snapshot (double) killed at each fault point: rolled back unless committed', async (t) => {
  await withSr((w) =>
    runFaults(
      t,
      w,
      [
        snapshotCase('snapshot-journaled', 'double', false),
        snapshotCase('snapshot-renamed', 'double', false),
        snapshotCase('snapshot-leaf-created', 'double', false),
        snapshotCase('snapshot-child-created', 'double', false),
        snapshotCase('snapshot-base-hidden', 'double', false),
        snapshotCase('metadata-temp-written', 'double', false),
        snapshotCase('metadata-renamed', 'double', true),
        snapshotCase('snapshot-metadata-written', 'double', true),
      ].map((c) => on(w, c)),
    ),
  );
});

test('vdi_clone and single snapshots killed at their fault points', async (t) => {
  await withSr((w) =>
    runFaults(
      t,
      w,
      [
        snapshotCase('snapshot-renamed', 'clone', false),
        snapshotCase('snapshot-child-created', 'clone', false),
        snapshotCase('snapshot-base-hidden', 'clone', false),
        snapshotCase('snapshot-metadata-written', 'clone', true),
        snapshotCase('snapshot-renamed', 'single', false),
        snapshotCase('snapshot-leaf-created', 'single', false),
        snapshotCase('snapshot-metadata-written', 'single', true),
      ].map((c) => on(w, c)),
    ),
  );
});

test('vdi_delete and vdi_resize killed at their fault points: delete completes, a resize within the BAT room is rolled forward', async (t) => {
  await withSr(async (w) => {
    const cases: FaultCase[] = [];
    for (const point of ['delete-journaled', 'delete-image-gone']) {
      // A leaf snapshot to delete, and a VDI whose single snapshot (the old image, with a child) is deleted.
      const leaf = await w.snapshot('V', `leaf-for-${point}`);
      cases.push({
        point,
        verb: 'vdi_delete',
        extra: { vdi_uuid: leaf, vdi_location: leaf },
        async outcome(w2) {
          w2.models.delete(leaf);
        },
      });
    }
    const single = await w.snapshot('V', 'single-to-delete', 'single');
    cases.push({
      point: 'delete-image-gone',
      verb: 'vdi_delete',
      extra: { vdi_uuid: single, vdi_location: single },
      async outcome(w2) {
        w2.models.delete(single);
        if (!(await readTree(w2.ctx)).get(single)?.hidden) throw new Error('a deleted image with children must stay, hidden');
      },
    });
    // Within the BAT room recovery finishes the resize, wherever it was killed.
    for (const [point, target] of [
      ['resize-journaled', 2 * V_SIZE],
      ['resize-room-made', 3 * V_SIZE],
      ['resize-image-done', 4 * V_SIZE],
    ] as const) {
      cases.push({
        point,
        verb: 'vdi_resize',
        extra: { ...vdiArgs(w, 'V'), args: [String(target)] },
        async outcome(w2) {
          if (!(await resizeOutcome(w2, 'V', target))) throw new Error(`${point}: resize to ${target} not rolled forward`);
        },
      });
    }
    await runFaults(t, w, cases);
    // The VDI can still be resized after all that.
    await w.resize('V', 5 * V_SIZE);
    await w.fill('V', 5 * V_SIZE - MiB, MiB);
    await w.check(t);
  });
});

test('vdi_resize killed at instants during a rewrite: the scratch copy goes, the VDI is before or after', async (t) => {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx);
  try {
    // The leaf holds 256 MiB; growing past its BAT room (64 GiB) rewrites it beside itself.
    await w.create('V', 1024 * MiB);
    await w.fill('V', 0, 64 * MiB);
    await w.snapshot('V', 'S');
    await w.fill('V', 128 * MiB, 256 * MiB);
    const V = w.uuid('V');
    const target = 100 * 1024 * MiB;
    const scratch = `.${V}.vhd.resize`;
    let caught = 0;
    let done = false;
    // Sweep the kill instant across the rewrite until it has finished once.
    for (let delay = 150; !done && delay < 6000; delay += 150) {
      const child = spawn(FILE_SR, [encodeMethodCall('vdi_resize', [request(ctx, 'vdi_resize', { vdi_uuid: V, vdi_location: V, args: [String(target)] })])], {
        env: ctx.env,
        stdio: 'ignore',
      });
      const exited = new Promise<NodeJS.Signals | null>((r) => child.on('exit', (_code, signal) => r(signal)));
      await Promise.race([sleep(delay), exited]);
      child.kill('SIGKILL');
      const signal = await exited;
      if (fs.existsSync(path.join(ctx.location, scratch))) caught++;
      const size = (await readTree(ctx)).get(V)!.virtualSize;
      t.true(size === 1024 * MiB || size === target, `after a kill at ${delay} ms the size is before or after (${size})`);
      if (size === target) {
        done = true;
        w.models.get(V)!.grow(target);
      }
      t.is(await diffVdi(ctx, V, w.models.get(V)!), undefined, `after a kill at ${delay} ms (${signal ?? 'finished'}) V reads as before`);
      await w.scan();
      await w.check(t, { scanned: true });
    }
    t.true(done, 'the resize finished once a call was left alone long enough');
    t.true(caught > 0, 'at least one kill landed during the rewrite (its scratch copy was there)');
    t.log(`${caught} kills left a scratch copy behind, each removed by the next sr_scan`);
    await w.fill('V', 99 * 1024 * MiB, MiB);
    await w.check(t, { scanned: true });
  } finally {
    await w.close();
    await ctx.cleanup();
  }
});
