// vdi_introduce under another uuid killed between the rename of the image and
// its record: the image is whole under its new name, and either the same call
// again or the next sr_scan makes it the VDI.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import test from 'ava';
import { createDynamic, writeAt } from '../../lib/vhd/index.js';
import { MiB, pattern, SparseDisk } from '../helpers/model.js';
import { callDriver, request } from '../helpers/sm.js';
import { checkProblems, diffVdi, imagePath, readMetadata } from '../helpers/sr-state.js';
import { withWorld } from '../helpers/world.js';

for (const finish of ['the same call again', 'an sr_scan'] as const) {
  test(`vdi_introduce killed at introduce-renamed: finished by ${finish}`, async (t) => {
    await withWorld(async (w, ctx) => {
      const image = randomUUID();
      await createDynamic(imagePath(ctx, image), 4 * MiB);
      await writeAt(imagePath(ctx, image), pattern(1, MiB), 0);
      const model = new SparseDisk(4 * MiB);
      model.write(0, pattern(1, MiB));
      const uuid = randomUUID();
      const args = { new_uuid: uuid, vdi_location: image, vdi_sm_config: {} };
      const killed = await callDriver('vdi_introduce', request(ctx, 'vdi_introduce', args), { ...ctx.env, SM_FAULT: 'introduce-renamed' });
      t.is(killed.signal, 'SIGKILL');
      t.false(fs.existsSync(imagePath(ctx, image)));
      t.is(await diffVdi(ctx, uuid, model), undefined, 'the image is whole under its new name');
      t.falsy(readMetadata(ctx).vdis[uuid], 'not recorded yet');
      if (finish === 'an sr_scan') await w.scan();
      else {
        const again = await callDriver('vdi_introduce', request(ctx, 'vdi_introduce', args), ctx.env);
        t.deepEqual(again.response, { kind: 'result', value: { uuid, location: uuid } });
      }
      t.truthy(readMetadata(ctx).vdis[uuid], 'recorded');
      t.deepEqual(await checkProblems(ctx), []);
    });
  });
}
