/** readImageSummary: the two-read scan view agrees with a full open, and refuses damage with VhdError. */
import test from 'ava';
import { stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createDifferencing, createDynamic, imageInfo, readImageSummary, VhdError, VhdImage, writeAt } from '../../lib/vhd/index.js';
import { MiB, readBytes, Rng, withTempDir, writeBytes } from './helpers.js';

test('the summary of dynamic, differencing and hidden images equals what a full open reports', async (t) => {
  await withTempDir(async (dir) => {
    const base = join(dir, 'base.vhd');
    const child = join(dir, 'child.vhd');
    await createDynamic(base, 20 * MiB + 1536);
    await writeAt(base, Buffer.alloc(5000, 1), 3 * MiB);
    await createDifferencing(child, base);
    const img = await VhdImage.open(base, true);
    await img.setHidden(true);
    await img.close();
    for (const p of [base, child]) {
      const s = await readImageSummary(p);
      const i = await imageInfo(p);
      t.is(s.uuid, i.uuid);
      t.is(s.virtualSize, i.virtualSize);
      t.is(s.physicalSize, (await stat(p)).size);
      t.is(s.hidden, i.hidden);
      t.is(s.parentName, i.parentName);
      t.is(s.parentUuid, i.parentUuid);
    }
    t.true((await readImageSummary(base)).hidden);
    t.is((await readImageSummary(child)).parentName, 'base.vhd');
  });
});

test('missing, truncated, damaged: a VhdError every time', async (t) => {
  await withTempDir(async (dir) => {
    const base = join(dir, 'base.vhd');
    const child = join(dir, 'child.vhd');
    await createDynamic(base, 8 * MiB);
    await createDifferencing(child, base);
    const kind = async (p: string) => {
      try {
        await readImageSummary(p);
        return 'ok';
      } catch (err) {
        if (!(err instanceof VhdError)) throw err;
        return err.kind;
      }
    };
    t.is(await kind(join(dir, 'missing.vhd')), 'not-found');
    const size = (await stat(child)).size;
    await writeBytes(child, size - 512 + 70, Buffer.from([0x99])); // primary footer uuid
    t.is(await kind(child), 'corrupt');
    await writeBytes(child, size - 512 + 70, await readBytes(child, 70, 1));
    t.is(await kind(child), 'ok');
    await writeBytes(child, 512 + 100, Buffer.from([0x42])); // header parent name
    t.is(await kind(child), 'corrupt');
    await truncate(base, 1000);
    t.is(await kind(base), 'corrupt');
    // Fuzzed footers and headers: a summary or a VhdError, nothing else.
    const pristine = await readBytes(child, 0, size);
    const rng = new Rng(8);
    for (let k = 0; k < 150; k++) {
      const b = Buffer.from(pristine);
      for (let n = rng.range(1, 3); n > 0; n--) {
        const at = rng.chance(0.5) ? size - 512 + rng.int(512) : rng.int(1536);
        b[at] = rng.int(256);
      }
      await writeFile(child, b);
      t.true(['ok', 'corrupt', 'unsupported'].includes(await kind(child)));
    }
  });
});
