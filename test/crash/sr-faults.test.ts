// A driver killed (SIGKILL, by SM_FAULT) at every fault point of the SR layer,
// then recovered as a host would (sr_attach or sr_scan). Afterwards every VDI
// reads as the model says (create and snapshot roll back unless their metadata
// was committed, delete completes, a resize within the BAT room is rolled forward, a rewrite is before or after), every image
// passes check, nothing is leaked, metadata matches the images, and the SR is
// usable: a further snapshot and a GC succeed.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { encodeMethodCall } from '../../lib/smapi/index.js';
import { MiB, SparseDisk } from '../helpers/model.js';
import { callDriver, createArgs, FILE_SR, gc, makeSmEnv, request, sleep, type SmEnv } from '../helpers/sm.js';
import { diffVdi, hostLeftovers, journals, listImages, readMetadata, readTree } from '../helpers/sr-state.js';
import { World } from '../helpers/world.js';

interface FaultCase {
  point: string;
  verb: string;
  extra: Record<string, unknown>;
  /** Updates the model once recovery is done; `committed`: the change survived. */
  outcome(w: World, before: { images: string[]; records: string[] }): Promise<void>;
}

const V_SIZE = 16 * MiB;

async function withSr(fn: (w: World, ctx: SmEnv) => Promise<void>): Promise<void> {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx);
  try {
    await w.create('V', V_SIZE);
    await w.fill('V', 0, 3 * MiB);
    await w.snapshot('V', 'S0');
    await w.fill('V', 5 * MiB + 100, 2 * MiB);
    await fn(w, ctx);
  } finally {
    await w.close();
    await ctx.cleanup();
  }
}

/** Images and records that appeared since `before`. */
function added(ctx: SmEnv, before: { images: string[]; records: string[] }) {
  const meta = readMetadata(ctx);
  return {
    images: listImages(ctx).filter((u) => !before.images.includes(u)),
    records: Object.keys(meta.vdis).filter((u) => !before.records.includes(u)),
    meta,
  };
}

async function runFaults(t: ExecutionContext, w: World, ctx: SmEnv, cases: FaultCase[]): Promise<void> {
  for (const [i, c] of cases.entries()) {
    const before = { images: listImages(ctx), records: Object.keys(readMetadata(ctx).vdis) };
    const killed = await callDriver(c.verb, request(ctx, c.verb, c.extra), { ...ctx.env, SM_FAULT: c.point });
    t.is(killed.signal, 'SIGKILL', `${c.point}: the driver died by SIGKILL (exit ${killed.code}: ${killed.stderr})`);
    t.is(killed.stdout, '', `${c.point}: no response was sent`);
    t.true(journals(ctx).length > 0, `${c.point}: the change was journaled`);

    // Recovery as a host does it: re-attach, or scan.
    const recoverBy = i % 2 === 0 ? 'sr_attach' : 'sr_scan';
    await w.s.call(recoverBy);
    await c.outcome(w, before);
    t.deepEqual(journals(ctx), [], `${c.point}: recovered by ${recoverBy}`);
    await w.check(t, { scanned: recoverBy === 'sr_scan' });
    t.deepEqual(hostLeftovers(ctx), [], `${c.point}: nothing left behind on the host`);

    // Usable afterwards: a snapshot, a write, the snapshot deleted, a GC.
    const name = `after-${c.point}-${i}`;
    await w.snapshot('V', name);
    await w.fill('V', (i % 6) * 2 * MiB + 4096, MiB);
    await w.delete(name);
    await gc(ctx);
    await w.scan();
    await w.check(t, { scanned: true });
  }
}

const vdiArgs = (w: World, name: string) => ({ vdi_uuid: w.uuid(name), vdi_location: w.uuid(name) });

function createCase(point: string, committed: boolean): FaultCase {
  return {
    point,
    verb: 'vdi_create',
    extra: { args: createArgs(6 * MiB, `new at ${point}`), vdi_type: 'user' },
    async outcome(w, before) {
      const a = added(w.ctx, before);
      if (!committed) {
        if (a.images.length || a.records.length) throw new Error(`${point}: create not rolled back: ${JSON.stringify(a)}`);
        return;
      }
      if (a.images.length !== 1 || a.records.length !== 1 || a.images[0] !== a.records[0]) throw new Error(`${point}: create not kept: ${JSON.stringify(a)}`);
      w.models.set(a.images[0], new SparseDisk(6 * MiB));
      w.names[a.images[0]] = `created-at-${point}`;
    },
  };
}

function snapshotCase(point: string, mode: 'double' | 'single' | 'clone', committed: boolean): FaultCase {
  return {
    point,
    verb: mode === 'clone' ? 'vdi_clone' : 'vdi_snapshot',
    extra: { vdi_uuid: '', ...(mode === 'single' ? { driver_params: { type: 'single' } } : {}) },
    async outcome(w, before) {
      const a = added(w.ctx, before);
      if (!committed) {
        if (a.images.length || a.records.length) throw new Error(`${point} (${mode}): snapshot not rolled back: ${JSON.stringify(a)}`);
        return;
      }
      const visible = a.records.filter((u) => a.meta.vdis[u].managed);
      if (visible.length !== 1) throw new Error(`${point} (${mode}): expected one new VDI, got ${JSON.stringify(a)}`);
      w.models.set(visible[0], w.models.get(w.uuid('V'))!.copy());
      w.names[visible[0]] = `${mode}-at-${point}`;
    },
  };
}

/** Fills in the VDI a case works on (known only once the SR is set up). */
function on(w: World, c: FaultCase, name = 'V'): FaultCase {
  return 'vdi_uuid' in c.extra ? { ...c, extra: { ...c.extra, ...vdiArgs(w, name) } } : c;
}

test('vdi_create killed at each fault point: rolled back unless committed', async (t) => {
  await withSr((w, ctx) =>
    runFaults(t, w, ctx, [
      createCase('create-journaled', false),
      createCase('create-image-written', false),
      createCase('create-metadata-written', true),
    ]),
  );
});

test('vdi_snapshot (double) killed at each fault point: rolled back unless committed', async (t) => {
  await withSr((w, ctx) =>
    runFaults(
      t,
      w,
      ctx,
      [
        snapshotCase('snapshot-journaled', 'double', false),
        snapshotCase('snapshot-renamed', 'double', false),
        snapshotCase('snapshot-leaf-created', 'double', false),
        snapshotCase('snapshot-child-created', 'double', false),
        snapshotCase('snapshot-base-hidden', 'double', false),
        snapshotCase('snapshot-metadata-written', 'double', true),
      ].map((c) => on(w, c)),
    ),
  );
});

test('vdi_clone and single snapshots killed at their fault points', async (t) => {
  await withSr((w, ctx) =>
    runFaults(
      t,
      w,
      ctx,
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
  await withSr(async (w, ctx) => {
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
    for (const [point, target] of [['resize-journaled', 2 * V_SIZE], ['resize-room-made', 3 * V_SIZE]] as const) {
      cases.push({
        point,
        verb: 'vdi_resize',
        extra: { ...vdiArgs(w, 'V'), args: [String(target)] },
        async outcome(w2) {
          const size = (await readTree(w2.ctx)).get(w2.uuid('V'))!.virtualSize;
          if (size !== target) throw new Error(`resize left size ${size}, not rolled forward to ${target}`);
          w2.models.get(w2.uuid('V'))!.grow(size);
        },
      });
    }
    await runFaults(t, w, ctx, cases);
    // The VDI can still be resized after all that.
    await w.resize('V', 4 * V_SIZE);
    await w.fill('V', 4 * V_SIZE - MiB, MiB);
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
