/**
 * The copy of given sectors only (a live leaf-coalesce's rounds and its final
 * step, datapath paused), made in the kernel (one program run for all blocks)
 * and through this process (several blocks at once), against the copy as it
 * was made before: one block at a time, every read and write awaited in turn,
 * written out below as the reference. Both must leave the same parent: the
 * same file byte for byte in one batch, the same bitmaps, batmap bits and
 * sectors in many.
 */
import test from 'ava';
import { copyFile, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { copyRangesProgram } from '../../lib/native/copy-ranges.js';
import { allSet, noneSet, setBits } from '../../lib/vhd/format/bitmap.js';
import { coalesceChainInto, createDifferencing, createDynamic, PreparedInKernelCopy, VhdImage, type BlockBuffer, type CoalesceOptions } from '../../lib/vhd/index.js';
import { mergeNearRuns } from '../../lib/vhd/sector-runs.js';
import { assertChainValid, assertSameBytes, BLOCK, ByteModel, firstDiff, MiB, qemuImg, readChain, Rng, runCli, SECTOR, withTempDir, writeAll } from './helpers.js';

const SPB = BLOCK / SECTOR;
const SIZE = 32 * MiB;

type Runs = [number, number][];

function mask(runs: Runs): Uint8Array {
  const m = new Uint8Array(SPB / 8);
  for (const [s, e] of runs) setBits(m, s, e);
  return m;
}

/**
 * base <- child, and the sectors asked for, covering every case of a block:
 * 0: the parent's block is full, the child holds every other sector, half asked for;
 * 1: the parent has part of it, the child 40 scattered 4 KiB pieces and a 32 KiB one, some asked for (two near runs
 *    in the 32 KiB piece, to be joined) with sectors the child lacks;
 * 2: the parent has part, the child the whole block, all asked for (the parent's block becomes full);
 * 3: new to the parent, scattered pieces, some asked for, and bytes under a clear bit of the child (they must reach the parent as zeros);
 * 4: new to the parent, the child's block full, all asked for (a new full block);
 * 5: the parent has part, only sectors the child lacks asked for (nothing copied);
 * 6: asked for, the child lacks the block; 7: the child has it, not asked for;
 * 8-15: 4 KiB pieces at random, every other one asked for (new to the parent in odd blocks).
 */
async function chainAndMask(dir: string): Promise<{ base: string; child: string; sectors: Map<number, Uint8Array>; model: ByteModel }> {
  const rng = new Rng(2026);
  const base = join(dir, 'base.vhd');
  const child = join(dir, 'child.vhd');
  await createDynamic(base, SIZE);
  const model = new ByteModel(SIZE);
  const baseWrites: [number, Buffer][] = [[0, rng.bytes(BLOCK)], [BLOCK, rng.bytes(300 * 1024)], [2 * BLOCK + 1000 * SECTOR, rng.bytes(200 * SECTOR)], [5 * BLOCK, rng.bytes(64 * 1024)]];
  for (let b = 8; b < 16; b += 2) baseWrites.push([b * BLOCK, rng.bytes(BLOCK)]);
  await writeAll(base, model, baseWrites);
  await createDifferencing(child, base);

  const sectors = new Map<number, Uint8Array>();
  const ask = (block: number, runs: Runs) => sectors.set(block, mask(runs));
  const childWrites: [number, Buffer][] = [];
  const piece = (block: number, sector: number, sectorsLong = 8) => childWrites.push([block * BLOCK + sector * SECTOR, rng.bytes(sectorsLong * SECTOR)]);

  for (let s = 0; s < SPB; s += 2) piece(0, s, 1);
  ask(0, Array.from({ length: SPB / 4 }, (_, k) => [k * 4, k * 4 + 1] as [number, number]));

  const block1: number[] = [];
  for (let k = 0; k < 40; k++) block1.push(rng.int(SPB / 8) * 8);
  for (const s of block1) piece(1, s);
  piece(1, 2048, 64); // two runs asked for in it, the sectors between them joined (the child holds them)
  ask(1, [...block1.filter((_, k) => k % 3 === 0).map((s) => [s, s + 8] as [number, number]), [2048, 2056], [2070, 2080], [4000, 4010]]);

  piece(2, 0, SPB);
  ask(2, [[0, SPB]]);

  const block3 = [16, 24, 40, 512, 520, 1000, 3000, 4088];
  for (const s of block3) piece(3, s);
  ask(3, [[16, 32], [1000, 1008], [4088, 4096], [2000, 2100]]);

  piece(4, 0, SPB);
  ask(4, [[0, SPB]]);

  piece(5, 100);
  ask(5, [[0, 50], [200, 300]]);

  ask(6, [[0, SPB]]);
  piece(7, 10);

  const random: [number, number][] = [];
  for (let k = 0; k < 300; k++) random.push([8 + rng.int(8), rng.int(SPB / 8) * 8]);
  for (const [b, s] of random) piece(b, s);
  for (const [b, s] of random.filter((_, k) => k % 2 === 0)) {
    const m = sectors.get(b) ?? new Uint8Array(SPB / 8);
    setBits(m, s, s + 8);
    sectors.set(b, m);
  }

  await writeAll(child, model, childWrites);
  const img = await VhdImage.open(child, true);
  try {
    await img.writeData(3, 1 * SECTOR, Buffer.alloc(SECTOR, 0xee)); // its bit stays clear: what a torn write leaves
  } finally {
    await img.close();
  }
  return { base, child, sectors, model };
}

/**
 * The copy of given sectors as it was made before (the reference): per block
 * in the child's on-disk order, a block the parent lacks read whole, masked,
 * zeroed under clear bits and appended after all the others; in a block the
 * parent has, each run (near runs merged) read and written in turn, then the
 * parent's bitmap; then the barrier, the BAT, the batmap, a barrier.
 */
async function copyOneBlockAtATime(childPath: string, parentPath: string, sectors: ReadonlyMap<number, Uint8Array>): Promise<number> {
  const child = await VhdImage.open(childPath);
  const parent = await VhdImage.open(parentPath, true);
  let copied = 0;
  try {
    const blocks = [...sectors.keys()].filter((i) => i < child.blockCount && child.hasBlock(i)).sort((a, b) => child.bitmapOffset(a) - child.bitmapOffset(b));
    const fresh: BlockBuffer[] = [];
    const full: number[] = [];
    for (const i of blocks) {
      const only = sectors.get(i)!;
      const held = child.isBlockFull(i) ? Buffer.alloc(child.bitmapBytes, 0xff) : Buffer.from((await child.readBitmap(i))!);
      const wanted = Buffer.from(held.map((b, k) => b & only[k]));
      if (noneSet(wanted, SPB)) continue;
      if (!parent.hasBlock(i)) {
        const c = await child.readBlock(i);
        c.bitmap.set(wanted);
        for (let s = 0; s < SPB; s++) if (!(wanted[s >> 3] & (0x80 >> (s & 7)))) c.data.fill(0, s * SECTOR, (s + 1) * SECTOR);
        else copied++;
        fresh.push(c);
        if (allSet(wanted, SPB)) full.push(i);
        continue;
      }
      const mine = parent.isBlockFull(i) ? Buffer.alloc(parent.bitmapBytes, 0xff) : Buffer.from((await parent.readBitmap(i))!);
      for (const [s, e] of mergeNearRuns(wanted, held, SPB)) {
        const data = Buffer.alloc((e - s) * SECTOR);
        await child.readData(i, s * SECTOR, data);
        await parent.writeData(i, s * SECTOR, data);
        setBits(mine, s, e);
        copied += e - s;
      }
      await parent.writeBitmap(i, mine);
      if (allSet(mine, SPB)) full.push(i);
    }
    await parent.appendBlocks(fresh);
    await parent.sync();
    await parent.writeBatEntries(fresh.map((b) => b.index));
    await parent.markFull(full);
    await parent.sync();
  } finally {
    await parent.close();
    await child.close();
  }
  return copied;
}

/** What a VHD reader sees of an image alone: per block, allocated or not, its bitmap, its batmap bit; and every sector. */
async function imageState(path: string): Promise<{ blocks: string[]; bytes: Buffer }> {
  const img = await VhdImage.open(path);
  try {
    const blocks: string[] = [];
    for (let i = 0; i < img.blockCount; i++) {
      blocks.push(img.hasBlock(i) ? `${i}: ${img.isBlockFull(i) ? 'full' : 'partial'} ${(await img.readBitmap(i))!.toString('hex')}` : `${i}: none`);
    }
    return { blocks, bytes: await readChain(path) };
  } finally {
    await img.close();
  }
}

/** Four copies of the same starting chain, one per way of copying. */
async function copies(dir: string, names: string[]): Promise<Record<string, { base: string; child: string }>> {
  const out: Record<string, { base: string; child: string }> = {};
  for (const name of names) {
    const d = join(dir, name);
    await mkdir(d);
    await copyFile(join(dir, 'base.vhd'), join(d, 'base.vhd'));
    await copyFile(join(dir, 'child.vhd'), join(d, 'child.vhd'));
    out[name] = { base: join(d, 'base.vhd'), child: join(d, 'child.vhd') };
  }
  return out;
}

test('given sectors copied in the kernel and through this process, in one batch or many, leave the parent the one-block-at-a-time copy leaves', async (t) => {
  t.truthy(copyRangesProgram(), 'npm run build compiled dist/native/copy-ranges (gcc is installed by npm run setup)');
  await withTempDir(async (dir) => {
    const { sectors, model } = await chainAndMask(dir);
    const ways: Record<string, CoalesceOptions> = {
      'in-kernel': {},
      'this-process': { inKernel: false },
      'in-kernel, a batch per block': { batchBytes: BLOCK },
      'this-process, a batch per block': { inKernel: false, batchBytes: BLOCK },
    };
    const at = await copies(dir, ['reference', ...Object.keys(ways)]);
    const chainBefore = await readChain(at.reference.child);
    assertSameBytes(t, chainBefore, model.buf, 'the chain before the copy');

    const baseBefore = await readChain(at.reference.base);
    const copied = await copyOneBlockAtATime(at.reference.child, at.reference.base, sectors);
    const reference = await imageState(at.reference.base);
    const referenceFile = await readFile(at.reference.base);
    t.true(reference.blocks.some((b) => b.startsWith('2: full')) && reference.blocks.some((b) => b.startsWith('4: full')), 'blocks 2 and 4 became full in the parent');
    t.true(reference.blocks.some((b) => b.startsWith('3: partial')) && reference.blocks[6] === '6: none', 'block 3 new and partial, block 6 not there');

    for (const [name, opts] of Object.entries(ways)) {
      const r = await coalesceChainInto([at[name].child], at[name].base, { ...opts, sectors });
      t.is(r.copiedBy, name.startsWith('in-kernel') ? 'in-kernel' : 'this-process', name);
      t.is(r.sectors, copied, `${name}: as many sectors copied as one block at a time`);
      const state = await imageState(at[name].base);
      t.deepEqual(state.blocks, reference.blocks, `${name}: every block's allocation, bitmap and batmap bit`);
      assertSameBytes(t, state.bytes, reference.bytes, `${name}: the parent alone reads as the reference`);
      if (!opts.batchBytes) {
        const file = await readFile(at[name].base);
        t.true(file.equals(referenceFile), `${name}: the same file, byte for byte (first difference at ${firstDiff(file, referenceFile)} of ${file.length} / ${referenceFile.length})`);
      }
      t.is(qemuImg(['compare', '-f', 'vpc', '-F', 'vpc', at[name].base, at.reference.base]).trim(), 'Images are identical.', name);
      const check = await runCli(['check', '-n', at[name].base]);
      t.is(check.code, 0, `sm-vhd check ${name}: ${check.stdout}${check.stderr}`);
      assertSameBytes(t, await readChain(at[name].child), chainBefore, `${name}: the chain reads the same`);
      await assertChainValid(t, at[name].base, `${name}: the parent`);
    }

    // What the reference copied is what was asked: the child's sectors asked for (runs joined over
    // sectors the child holds), the parent's own elsewhere, zeros in new blocks' other sectors.
    const sector = (buf: Buffer, s: number) => buf.subarray(s * SECTOR, (s + 1) * SECTOR);
    t.true(reference.bytes.subarray((SPB + 2048) * SECTOR, (SPB + 2080) * SECTOR).equals(chainBefore.subarray((SPB + 2048) * SECTOR, (SPB + 2080) * SECTOR)), 'two near runs asked for: they and the sectors between them are the child\'s');
    t.true(sector(reference.bytes, 3 * SPB + 1).equals(Buffer.alloc(SECTOR)), 'the bytes under the child\'s clear bit reached the parent as zeros');
    t.true(sector(reference.bytes, 3 * SPB + 16).equals(sector(chainBefore, 3 * SPB + 16)), 'a sector asked for in a new block: the child\'s');
    t.true(sector(reference.bytes, 3 * SPB + 40).equals(Buffer.alloc(SECTOR)), 'a sector not asked for in a new block: zeros');
    t.true(reference.bytes.subarray(2 * BLOCK, 3 * BLOCK).equals(chainBefore.subarray(2 * BLOCK, 3 * BLOCK)), 'block 2 whole: the child\'s');
    t.true(reference.bytes.subarray(5 * BLOCK, 6 * BLOCK).equals(baseBefore.subarray(5 * BLOCK, 6 * BLOCK)), 'block 5, only sectors the child lacks asked for: the parent\'s own');
    t.false(chainBefore.subarray(5 * BLOCK, 6 * BLOCK).equals(baseBefore.subarray(5 * BLOCK, 6 * BLOCK)), 'block 5 reads otherwise through the child');
  });
});

test('a copy program started ahead on the same two files does the copy; one started on other files is left alone and ended', async (t) => {
  await withTempDir(async (dir) => {
    const { sectors } = await chainAndMask(dir);
    const at = await copies(dir, ['reference', 'prepared', 'elsewhere']);
    await copyOneBlockAtATime(at.reference.child, at.reference.base, sectors);
    const referenceFile = await readFile(at.reference.base);

    const same = await PreparedInKernelCopy.start(at.prepared.child, at.prepared.base);
    t.truthy(same, 'started: the program is built and both are files');
    try {
      const r = await coalesceChainInto([at.prepared.child], at.prepared.base, { sectors, prepared: same });
      t.is(r.copiedBy, 'in-kernel');
      t.true(same!.used, 'the copy took the run started ahead');
    } finally {
      await same!.close();
    }
    const file = await readFile(at.prepared.base);
    t.true(file.equals(referenceFile), `the same parent as one block at a time (first difference at ${firstDiff(file, referenceFile)})`);

    // Started on another pair of files (the same bytes, other inodes): the copy must not write through it.
    const otherBefore = await readFile(at.elsewhere.base);
    const other = await PreparedInKernelCopy.start(at.elsewhere.child, at.elsewhere.base);
    const into = await copies(dir, ['target']);
    try {
      await coalesceChainInto([into.target.child], into.target.base, { sectors, prepared: other });
      t.false(other!.used, 'not taken: its files are not the images copied');
    } finally {
      await other!.close(); // resolves once the program has ended, having copied nothing
    }
    t.true((await readFile(at.elsewhere.base)).equals(otherBefore), 'the other parent is untouched');
    t.true((await readFile(into.target.base)).equals(referenceFile), 'the images copied got their copy');
  });
});
