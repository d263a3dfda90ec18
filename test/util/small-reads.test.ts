/** small-reads.ts: whole files of any size, a missing file as undefined, reads stopping at the end. */
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSmallFile, SmallReader } from '../../lib/util/small-reads.js';

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'small-reads-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('readSmallFile returns the whole text at sizes around its buffer steps, and undefined for a missing file', async (t) => {
  await withDir(async (dir) => {
    for (const size of [0, 1, 4095, 4096, 4097, 8192, 12289, 100_000]) {
      const text = Array.from({ length: size }, (_, i) => String.fromCharCode(97 + (i % 26))).join('');
      await writeFile(join(dir, `f${size}`), text);
      t.is(await readSmallFile(join(dir, `f${size}`)), text, `${size} bytes`);
    }
    t.is(await readSmallFile(join(dir, 'missing')), undefined);
    await t.throwsAsync(readSmallFile(dir), { code: 'EISDIR' });
  });
});

test('SmallReader.read fills the buffer, or says how much there was before the end', async (t) => {
  await withDir(async (dir) => {
    const path = join(dir, 'f');
    await writeFile(path, Buffer.from([1, 2, 3, 4, 5]));
    const r = await SmallReader.open(path);
    try {
      const b = Buffer.alloc(3);
      t.is(await r.read(b, 1), 3);
      t.deepEqual([...b], [2, 3, 4]);
      t.is(await r.read(Buffer.alloc(4), 3), 2);
      t.is(await r.read(Buffer.alloc(4), 10), 0);
      t.is((await r.stat()).size, 5);
    } finally {
      await r.close();
    }
    await t.throwsAsync(SmallReader.open(join(dir, 'missing')), { code: 'ENOENT' });
  });
});
