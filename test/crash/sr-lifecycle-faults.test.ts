// sr_create and sr_delete killed (SIGKILL, by SM_FAULT) at each of their fault
// points. A half-made SR is made again by a second sr_create on the same
// location (or, once its metadata is in place, simply attached); a half-deleted
// SR is deleted by a second sr_delete. Either way nothing is leaked, and the
// location then holds a working SR again.
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { SM_ERRORS } from '../../lib/errors/sm-error.js';
import { assertRecoveredAndUsable } from '../helpers/crash.js';
import { MiB } from '../helpers/model.js';
import { callDriver, makeSmEnv, request, SmFault, xml, type SmEnv } from '../helpers/sm.js';
import { hostLeftovers } from '../helpers/sr-state.js';
import { World } from '../helpers/world.js';

const SR_CREATE = { args: ['0'], sr_sm_config: { name_label: 'test SR' } };

/** A VDI written and snapshotted in the SR, every invariant checked, the SR used. */
async function useSr(t: ExecutionContext, w: World, what: string): Promise<void> {
  await w.create('V', 8 * MiB);
  await w.fill('V', MiB, 3 * MiB);
  await assertRecoveredAndUsable(t, w, what, 0, false);
}

async function killed(t: ExecutionContext, ctx: SmEnv, verb: string, extra: Record<string, unknown>, point: string): Promise<void> {
  const r = await callDriver(verb, request(ctx, verb, extra), { ...ctx.env, SM_FAULT: point });
  t.is(r.signal, 'SIGKILL', `${point}: ${verb} died by SIGKILL (exit ${r.code}: ${r.stderr})`);
  t.is(r.stdout, '', `${point}: no response was sent`);
}

for (const [point, made] of [
  ['sr-create-storage-made', false],
  ['metadata-temp-written', false],
  ['sr-create-metadata-written', true],
] as const) {
  test(`sr_create killed at ${point}: ${made ? 'the SR is made and attaches' : 'a second sr_create makes it'}`, async (t) => {
    const ctx = await makeSmEnv();
    let w: World | undefined;
    try {
      await killed(t, ctx, 'sr_create', SR_CREATE, point);
      t.true(fs.existsSync(ctx.location), `${point}: the storage was made`);
      if (point === 'metadata-temp-written') {
        const temps = fs.readdirSync(path.join(ctx.location, '.sm')).filter((n) => n.endsWith('.tmp'));
        t.is(temps.length, 1, `${point}: the metadata's temp file was left, not renamed into place`);
      }
      if (made) {
        // Complete: creating it again is refused (an SR is there), attaching works.
        const again = await xml(ctx, 'sr_create', SR_CREATE).catch((err: unknown) => err);
        t.is(again instanceof SmFault ? again.code : again, SM_ERRORS.SRExists.code, `${point}: a second sr_create finds the SR (${String(again)})`);
        w = await World.open(ctx, { create: false });
      } else {
        w = await World.open(ctx); // sr_create on the same location, then sr_attach
      }
      await useSr(t, w, point);
    } finally {
      await w?.close();
      await ctx.cleanup();
    }
  });
}

test('sr_delete killed at each fault point: a second sr_delete finishes, the location can hold a new SR', async (t) => {
  for (const point of ['sr-delete-images-removed', 'sr-delete-metadata-gone']) {
    const ctx = await makeSmEnv();
    try {
      // Garbage the GC never collected (a hidden base copy) goes with the SR.
      const w = await World.open(ctx);
      await w.create('V', 8 * MiB);
      await w.fill('V', 0, 2 * MiB);
      await w.snapshot('V', 'S');
      await w.delete('V');
      await w.delete('S');
      await w.close();

      await killed(t, ctx, 'sr_delete', {}, point);
      await xml(ctx, 'sr_delete');
      t.false(fs.existsSync(ctx.location), `${point}: the SR's directory is gone`);
      t.deepEqual(hostLeftovers(ctx), [], `${point}: nothing of the SR is left on the host`);

      const again = await World.open(ctx);
      try {
        await useSr(t, again, `${point}, a new SR in the same place`);
      } finally {
        await again.close();
      }
    } finally {
      await ctx.cleanup();
    }
  }
});
