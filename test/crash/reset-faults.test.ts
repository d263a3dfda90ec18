// Reset on boot (vdi_epoch_begin, vdi_on_boot=reset) killed after each step of
// emptying the leaf: the image stays valid and reads either as before the
// reset or as at the snapshot, never anything else; the next epoch_begin (the
// toolstack sends one before every VM start) finishes the reset.
import fs from 'node:fs';
import test from 'ava';
import { MiB, pattern } from '../helpers/model.js';
import { callDriver, request } from '../helpers/sm.js';
import { checkProblems, diffVdi, imagePath } from '../helpers/sr-state.js';
import { withWorld } from '../helpers/world.js';

const vdiArgs = (vdi: string, extra: Record<string, unknown> = {}) => ({ vdi_uuid: vdi, vdi_location: vdi, ...extra });

const POINTS: Array<[point: string, reset: boolean]> = [
  ['reset-batmap-cleared', false],
  ['reset-bat-cleared', true],
  ['reset-footer-moved', true],
];

for (const [point, reset] of POINTS) {
  test(`reset on boot killed at ${point}: ${reset ? 'already reset' : 'as before'}, valid, finished by the next epoch_begin`, async (t) => {
    await withWorld(async (w, ctx) => {
      const V = await w.create('V', 8 * MiB);
      await w.write('V', 0, pattern(1, 2 * MiB));
      const atSnapshot = w.models.get(V)!.copy();
      await w.snapshot('V', 'S');
      await w.write('V', MiB, pattern(2, 4 * MiB));
      const before = w.models.get(V)!.copy();
      const sizeBefore = fs.statSync(imagePath(ctx, V)).size;

      const args = vdiArgs(V, { vdi_on_boot: 'reset' });
      const killed = await callDriver('vdi_epoch_begin', request(ctx, 'vdi_epoch_begin', args), { ...ctx.env, SM_FAULT: point });
      t.is(killed.signal, 'SIGKILL', `killed at ${point}`);
      t.deepEqual(await checkProblems(ctx), [], 'every image valid after the kill');
      t.is(await diffVdi(ctx, V, reset ? atSnapshot : before), undefined, reset ? 'reads as at the snapshot' : 'reads as before the reset');

      const again = await callDriver('vdi_epoch_begin', request(ctx, 'vdi_epoch_begin', args), ctx.env);
      t.is(again.response.kind, 'result', JSON.stringify(again.response));
      w.models.set(V, atSnapshot.copy());
      t.is(await diffVdi(ctx, V, atSnapshot), undefined, 'reset once run again');
      t.true(fs.statSync(imagePath(ctx, V)).size < sizeBefore / 2, 'the space is given back');
      await w.check(t);
    });
  });
}
