/**
 * Coalesce specifics: sector-fragmented children, parents with and without blocks,
 * idempotence (the crash-safety property), abort and resume, size and identity checks.
 */
import test from 'ava';
import { copyFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  checkChain,
  coalesceChainInto,
  coalesceIntoParent,
  createDifferencing,
  createDynamic,
  resizeImage,
  VhdError,
  VhdImage,
} from '../../lib/vhd/index.js';
import {
  assertChainValid,
  assertSameBytes,
  BLOCK,
  ByteModel,
  MiB,
  qemuImg,
  readChain,
  Rng,
  SECTOR,
  withTempDir,
  writeAll,
} from './helpers.js';

const SPB = BLOCK / SECTOR;

/** Every other sector of the given blocks (a bitmap of alternating bits), plus a few odd runs. */
function fragmentedWrites(rng: Rng, blocks: number[]): [number, Buffer][] {
  const out: [number, Buffer][] = [];
  for (const b of blocks) for (let s = 0; s < SPB; s += 2) out.push([b * BLOCK + s * SECTOR, rng.bytes(SECTOR)]);
  return out;
}

/** Sectors whose bitmap bit is set in the image (what a coalesce must copy). */
async function presentSectors(path: string): Promise<number> {
  const img = await VhdImage.open(path);
  try {
    let n = 0;
    for (let i = 0; i < img.blockCount; i++) {
      if (!img.hasBlock(i)) continue;
      const bm = (await img.readBitmap(i))!;
      for (let s = 0; s < img.sectorsPerBlock; s++) if (bm[s >> 3] & (0x80 >> (s & 7))) n++;
    }
    return n;
  } finally {
    await img.close();
  }
}

/** base (16 MiB, optionally with data) <- child (sector-fragmented). */
async function fragmentedChain(dir: string, seed: number, parentHasData: boolean) {
  const rng = new Rng(seed);
  const size = 16 * MiB;
  const base = join(dir, 'base.vhd');
  const child = join(dir, 'child.vhd');
  const model = new ByteModel(size);
  await createDynamic(base, size);
  if (parentHasData) {
    await writeAll(base, model, [
      [0, rng.bytes(BLOCK)], // block 0 full (batmap bit)
      [BLOCK + 1000, rng.bytes(300 * 1024)], // block 1 partial
      [2 * BLOCK + 7 * SECTOR + 3, rng.bytes(5)], // block 2: one sector
      [6 * BLOCK - 100, rng.bytes(200)], // blocks 5/6 across a boundary
    ]);
  }
  await createDifferencing(child, base);
  // Fragmented over blocks the parent has (0, 1, 2) and lacks (3, 4), plus a run and a byte.
  await writeAll(child, model, [
    ...fragmentedWrites(rng, [0, 1, 3]),
    [2 * BLOCK, rng.bytes(SECTOR)],
    [2 * BLOCK + 9 * SECTOR, rng.bytes(3 * SECTOR)],
    [4 * BLOCK + 12345, rng.bytes(1)],
    [5 * BLOCK + 64 * SECTOR, Buffer.alloc(8 * SECTOR)], // zeros over nothing: still "present"
  ]);
  return { base, child, model, size };
}

for (const parentHasData of [true, false]) {
  const label = parentHasData ? 'a parent with some blocks' : 'an empty parent';
  test(`a sector-fragmented child coalesced into ${label}: parent reads as the model; twice = same bytes`, async (t) => {
    await withTempDir(async (dir) => {
      const { base, child, model } = await fragmentedChain(dir, parentHasData ? 1 : 2, parentHasData);
      assertSameBytes(t, await readChain(child), model.buf, 'chain before');
      const childSectors = await presentSectors(child);
      const childBytes = await readFile(child);

      const r1 = await coalesceIntoParent(child);
      t.is(r1.sectors, childSectors, 'every present child sector copied, nothing else');
      t.is(r1.bytesCopied, childSectors * SECTOR);
      assertSameBytes(t, await readChain(base), model.buf, 'parent alone after coalesce');
      assertSameBytes(t, await readChain(child), model.buf, 'child chain after coalesce');
      t.true((await readFile(child)).equals(childBytes), 'the child is not modified');
      await assertChainValid(t, child);
      // A dynamic base keeps clear sectors zero on disk, so qemu (which ignores bitmaps) agrees.
      const raw = join(dir, 'base.raw');
      qemuImg(['convert', '-f', 'vpc', '-O', 'raw', base, raw]);
      assertSameBytes(t, await readFile(raw), model.buf, 'qemu-img convert of the coalesced parent');

      const once = await readFile(base);
      const r2 = await coalesceIntoParent(child);
      t.is(r2.sectors, childSectors);
      t.true((await readFile(base)).equals(once), 'a second coalesce leaves the parent byte-identical');
      await assertChainValid(t, child);
    });
  });
}

test('coalescing into a differencing parent keeps the grandparent and the parent\'s other sectors', async (t) => {
  await withTempDir(async (dir) => {
    const rng = new Rng(3);
    const size = 12 * MiB;
    const gp = join(dir, 'gp.vhd');
    const p = join(dir, 'p.vhd');
    const c = join(dir, 'c.vhd');
    const model = new ByteModel(size);
    await createDynamic(gp, size);
    await writeAll(gp, model, [[0, rng.bytes(3 * BLOCK)]]);
    await createDifferencing(p, gp);
    await writeAll(p, model, [[BLOCK + 17 * SECTOR, rng.bytes(40 * SECTOR)], [4 * BLOCK, rng.bytes(1000)]]);
    await createDifferencing(c, p);
    await writeAll(c, model, [...fragmentedWrites(rng, [1]), [3 * BLOCK - 5, rng.bytes(10)], [5 * BLOCK + 1, rng.bytes(SECTOR)]]);
    const gpBytes = await readFile(gp);
    await coalesceIntoParent(c);
    t.true((await readFile(gp)).equals(gpBytes), 'grandparent untouched');
    assertSameBytes(t, await readChain(p), model.buf, 'p -> gp reads as the model');
    await assertChainValid(t, c);
  });
});

test('an aborted coalesce leaves both images valid and the chain intact; a re-run completes it', async (t) => {
  await withTempDir(async (dir) => {
    const { base, child, model } = await fragmentedChain(dir, 4, true);
    const before = await readChain(base);
    const controller = new AbortController();
    let progressCalls = 0;
    const err = await t.throwsAsync(
      coalesceIntoParent(child, {
        batchBytes: 1, // a durability barrier (and a progress call) after every new block
        signal: controller.signal,
        onProgress: () => {
          progressCalls++;
          controller.abort();
        },
      }),
    );
    t.true(err instanceof VhdError && err.kind === 'aborted', String(err));
    t.true(progressCalls >= 1);
    await assertChainValid(t, child);
    assertSameBytes(t, await readChain(child), model.buf, 'chain still reads as the model');
    const partial = await readChain(base);
    t.false(partial.equals(model.buf), 'the parent is only partly coalesced');
    t.false(partial.equals(before), 'but some work was done');

    await coalesceIntoParent(child);
    assertSameBytes(t, await readChain(base), model.buf, 'the re-run completes the coalesce');
    await assertChainValid(t, child);
  });
});

test('a coalesce whose signal is already aborted writes nothing', async (t) => {
  await withTempDir(async (dir) => {
    const { base, child } = await fragmentedChain(dir, 5, true);
    const bytes = await readFile(base);
    const err = await t.throwsAsync(coalesceIntoParent(child, { signal: AbortSignal.abort() }));
    t.true(err instanceof VhdError && err.kind === 'aborted');
    t.true((await readFile(base)).equals(bytes));
  });
});

test('a grown child: the parent takes its size when its BAT has room, and is refused untouched otherwise', async (t) => {
  await withTempDir(async (dir) => {
    const rng = new Rng(6);
    for (const room of [true, false]) {
      const base = join(dir, `base-${room}.vhd`);
      const child = join(dir, `child-${room}.vhd`);
      const model = new ByteModel(8 * MiB);
      await createDynamic(base, 8 * MiB, { maxSize: room ? 16 * MiB : undefined });
      await writeAll(base, model, [[8 * MiB - 10, rng.bytes(10)]]);
      await createDifferencing(child, base);
      await resizeImage(child, 13 * MiB + 3 * SECTOR);
      model.grow(13 * MiB + 3 * SECTOR);
      await writeAll(child, model, [[13 * MiB, rng.bytes(3 * SECTOR)], [7 * MiB, rng.bytes(2 * MiB)]]);
      const baseBytes = await readFile(base);
      if (room) {
        await coalesceIntoParent(child);
        const img = await VhdImage.open(base);
        t.is(img.virtualSize, 13 * MiB + 3 * SECTOR);
        await img.close();
        assertSameBytes(t, await readChain(base), model.buf, 'grown parent reads as the model');
        await assertChainValid(t, child);
      } else {
        const err = await t.throwsAsync(coalesceIntoParent(child));
        t.true(err instanceof VhdError && err.kind === 'invalid-argument', String(err));
        t.true((await readFile(base)).equals(baseBytes), 'parent untouched');
        await resizeImage(base, 13 * MiB + 3 * SECTOR);
        await coalesceIntoParent(child);
        assertSameBytes(t, await readChain(base), model.buf, 'after growing the parent first');
        await assertChainValid(t, child);
      }
    }
  });
});

test('coalesce refuses a base image and a parent with the wrong uuid, writing nothing', async (t) => {
  await withTempDir(async (dir) => {
    const base = join(dir, 'base.vhd');
    const other = join(dir, 'other.vhd');
    const child = join(dir, 'child.vhd');
    await createDynamic(base, 4 * MiB);
    await createDynamic(other, 4 * MiB);
    await createDifferencing(child, base);
    const model = new ByteModel(4 * MiB);
    await writeAll(child, model, [[100, Buffer.from('data')]]);
    const e1 = await t.throwsAsync(coalesceIntoParent(base));
    t.true(e1 instanceof VhdError && e1.kind === 'invalid-argument');
    // Swap the parent file for an unrelated image with the same name.
    await copyFile(other, base);
    const bytes = await readFile(base);
    const e2 = await t.throwsAsync(coalesceIntoParent(child));
    t.true(e2 instanceof VhdError && e2.kind === 'chain', String(e2));
    t.true((await readFile(base)).equals(bytes));
    const reports = await checkChain(child, { parents: true });
    t.true(reports.some((r) => r.problems.some((p) => /uuid/.test(p))));
  });
});

test('a run of images collapses into their ancestor in one pass: the highest image wins, the chain reads the same throughout, and a redo changes nothing', async (t) => {
  await withTempDir(async (dir) => {
    const rng = new Rng(11);
    const paths = ['base', 'x1', 'x2', 'x3', 'leaf'].map((n) => join(dir, `${n}.vhd`));
    const [base, x1, x2, x3, leaf] = paths;
    const model = new ByteModel(16 * MiB);
    await createDynamic(base, 16 * MiB);
    await writeAll(base, model, [[0, rng.bytes(3 * MiB)]]);
    // Overlapping writes in every layer (whole blocks, partial blocks, single sectors), so order matters.
    const layers: [string, string][] = [[x1, base], [x2, x1], [x3, x2], [leaf, x3]];
    for (const [k, [child, parent]] of layers.entries()) {
      await createDifferencing(child, parent);
      await writeAll(child, model, [
        [MiB + k * 300 * SECTOR, rng.bytes(2 * MiB + 77 * SECTOR)],
        [(5 + k) * MiB, rng.bytes(BLOCK)],
        [11 * MiB + 3 * SECTOR, rng.bytes(SECTOR)],
      ]);
    }
    const aboveX3 = new ByteModel(16 * MiB);
    aboveX3.buf.set(await readChain(x3));
    const r1 = await coalesceChainInto([x1, x2, x3], base, { batchBytes: 2 * BLOCK });
    t.true(r1.bytesCopied > 0);
    assertSameBytes(t, await readChain(base), aboveX3.buf, 'the ancestor alone reads as the top of the run');
    assertSameBytes(t, await readChain(leaf), model.buf, 'the leaf reads the same through the whole chain');
    const bytes = await readFile(base);
    await coalesceChainInto([x1, x2, x3], base, { batchBytes: 2 * BLOCK }); // a redo after a crash
    assertSameBytes(t, await readChain(base), aboveX3.buf, 'a redo leaves the same data');
    t.true((await readFile(base)).length === bytes.length, 'a redo allocates no new blocks');
    await assertChainValid(t, leaf);
  });
});

test('a run given out of order, or not ending at the ancestor, is refused before anything is written', async (t) => {
  await withTempDir(async (dir) => {
    const [base, x1, x2] = ['base', 'x1', 'x2'].map((n) => join(dir, `${n}.vhd`));
    await createDynamic(base, 4 * MiB);
    await createDifferencing(x1, base);
    await writeAll(x1, new ByteModel(4 * MiB), [[0, Buffer.alloc(SECTOR, 1)]]);
    await createDifferencing(x2, x1);
    await writeAll(x2, new ByteModel(4 * MiB), [[SECTOR, Buffer.alloc(SECTOR, 2)]]);
    const bytes = await readFile(base);
    for (const run of [[x2, x1], [x2], [x1, x1]]) {
      const err = await t.throwsAsync(coalesceChainInto(run, base));
      t.true(err instanceof VhdError && err.kind === 'chain', String(err));
    }
    t.true((await readFile(base)).equals(bytes));
  });
});

test('a coalesce of given sectors only (a live leaf-coalesce round): those sectors, and the ones the child holds between two near runs, reach the parent; the rest of the parent stays', async (t) => {
  await withTempDir(async (dir) => {
    const parent = join(dir, 'p.vhd');
    const child = join(dir, 'c.vhd');
    await createDynamic(parent, 8 * MiB);
    const rng = new Rng(77);
    const older = rng.bytes(2 * BLOCK);
    await writeAll(parent, new ByteModel(8 * MiB), [[0, older]]);
    await createDifferencing(child, parent);
    const newer = rng.bytes(64 * SECTOR);
    const fresh = rng.bytes(8 * SECTOR);
    await writeAll(child, new ByteModel(8 * MiB), [
      [0, newer], // block 0, sectors 0-63: the parent has the block
      [BLOCK, rng.bytes(8 * SECTOR)], // block 1: not asked for
      [2 * BLOCK + 100 * SECTOR, fresh], // block 2: new to the parent
    ]);
    const chainBefore = await readChain(child);
    const mask = (runs: [number, number][]) => {
      const m = new Uint8Array(SPB / 8);
      for (const [s, e] of runs) for (let x = s; x < e; x++) m[x >> 3]! |= 0x80 >> (x & 7);
      return m;
    };
    const sectors = new Map([
      [0, mask([[0, 8], [16, 24], [300, 310]])], // sectors 8-15 lie between two runs and the child holds them; 300-309 it does not hold
      [2, mask([[100, 108]])],
    ]);
    const r = await coalesceChainInto([child], parent, { sectors });
    t.is(r.sectors, 24 + 8, 'sectors 0-23 of block 0 (the gap merged) and 8 of block 2');
    const p = await readChain(parent);
    t.true(p.subarray(0, 24 * SECTOR).equals(newer.subarray(0, 24 * SECTOR)), 'block 0, sectors 0-23: the child\'s');
    t.true(p.subarray(24 * SECTOR, 2 * BLOCK).equals(older.subarray(24 * SECTOR)), 'the rest of blocks 0 and 1: the parent\'s own');
    t.true(p.subarray(2 * BLOCK + 100 * SECTOR, 2 * BLOCK + 108 * SECTOR).equals(fresh), 'block 2, new to the parent: the sectors asked for');
    t.true(p.subarray(2 * BLOCK, 2 * BLOCK + 100 * SECTOR).equals(Buffer.alloc(100 * SECTOR)), 'zeros around them');
    assertSameBytes(t, await readChain(child), chainBefore, 'the chain reads the same');
    await assertChainValid(t, child);
  });
});

test('given sectors in many blocks, batches of blocks new to the parent committed meanwhile: every sector asked for is the child\'s, every sector the child lacks stays the parent\'s, the chain reads the same', async (t) => {
  await withTempDir(async (dir) => {
    const parent = join(dir, 'p.vhd');
    const child = join(dir, 'c.vhd');
    const size = 64 * MiB;
    const blocks = size / BLOCK;
    await createDynamic(parent, size);
    const rng = new Rng(4242);
    // The parent holds the even blocks whole; the child writes 4 KiB pieces all over (odd blocks are new to the parent).
    const parentWrites: [number, Buffer][] = [];
    for (let b = 0; b < blocks; b += 2) parentWrites.push([b * BLOCK, rng.bytes(BLOCK)]);
    await writeAll(parent, new ByteModel(size), parentWrites);
    const parentBefore = await readChain(parent);
    await createDifferencing(child, parent);
    const childWrites: [number, Buffer][] = [];
    for (let k = 0; k < 600; k++) childWrites.push([rng.int(size / 4096) * 4096, rng.bytes(4096)]);
    await writeAll(child, new ByteModel(size), childWrites);
    const chainBefore = await readChain(child);
    // Asked for: half of the pieces written, as the datapath reports them (sector runs per block).
    const sectors = new Map<number, Uint8Array>();
    const asked: number[] = [];
    for (const [offset] of childWrites.filter((_, k) => k % 2 === 0)) {
      const first = offset / SECTOR;
      const map = sectors.get(Math.floor(first / SPB)) ?? new Uint8Array(SPB / 8);
      sectors.set(Math.floor(first / SPB), map);
      for (let s = first; s < first + 8; s++) {
        map[(s % SPB) >> 3]! |= 0x80 >> (s & 7);
        asked.push(s);
      }
    }
    const held = new Set(childWrites.flatMap(([offset]) => Array.from({ length: 8 }, (_, k) => offset / SECTOR + k)));
    await coalesceChainInto([child], parent, { sectors, batchBytes: BLOCK });
    const p = await readChain(parent);
    const sector = (buf: Buffer, s: number) => buf.subarray(s * SECTOR, (s + 1) * SECTOR);
    t.true(asked.every((s) => sector(p, s).equals(sector(chainBefore, s))), 'every sector asked for is the child\'s');
    let lacked = 0;
    for (let s = 0; s < size / SECTOR; s++) {
      if (held.has(s)) continue;
      lacked++;
      if (!sector(p, s).equals(sector(parentBefore, s))) return t.fail(`sector ${s}, which the child lacks, changed in the parent`);
    }
    t.true(lacked > 0);
    assertSameBytes(t, await readChain(child), chainBefore, 'the chain reads the same');
    await assertChainValid(t, child);
    await assertChainValid(t, parent);
  });
});
