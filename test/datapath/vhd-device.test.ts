// The VHD chain as a BlockDevice: concurrent writes against a byte model, reads
// through a differencing chain, extents from the BATs and bitmaps, the
// read-only shape, allocation waits, zeroing and the close lifecycle. Real
// files, checked by the project's check and by qemu-img.
import { createHash } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { openVhdDevice, type VhdDevice, type WritableVhdDevice } from '../../lib/datapath/vhd-device.js';
import { DeviceError, type Extent } from '../../lib/nbd/block-device.js';
import { createDifferencing, createDynamic, exportRaw, VhdImage, writeAt } from '../../lib/vhd/index.js';
import { assertChainValid, assertSameBytes, BLOCK, ByteModel, MiB, qemuImg, Rng, SECTOR, withTempDir } from '../vhd/helpers.js';

interface PlannedWrite {
  offset: number;
  data: Buffer;
}

/**
 * A round of writes that are pairwise disjoint in bytes (so the result is
 * defined) but often share sectors and blocks, with unaligned edges and
 * sub-sector lengths: exactly what read-modify-write and the locks must get right.
 */
function planRound(rng: Rng, size: number, count: number, hot: number[]): PlannedWrite[] {
  const out: PlannedWrite[] = [];
  const taken: Array<[number, number]> = [];
  for (let tries = 0; out.length < count && tries < count * 20; tries++) {
    const kind = rng.int(4);
    const length = kind === 0 ? rng.range(1, 700) : kind === 1 ? rng.range(1, 16) * 4096 : kind === 2 ? rng.range(1, 300_000) : rng.range(1, 1100);
    // Most writes near a few hot blocks, so blocks are shared and allocations collide.
    const base = rng.chance(0.7) ? rng.pick(hot) * BLOCK + rng.range(-4096, BLOCK) : rng.int(size);
    const offset = Math.max(0, Math.min(size - length, kind === 1 ? base - (base % 4096) : base));
    if (taken.some(([a, b]) => offset < b && a < offset + length)) continue;
    taken.push([offset, offset + length]);
    out.push({ offset, data: rng.bytes(length) });
  }
  return out;
}

/** Random reads during a round: every byte must be the value before the round or after it. */
async function readDuringRound(t: import('ava').ExecutionContext, dev: VhdDevice, rng: Rng, before: Buffer, after: Buffer, n: number): Promise<void> {
  for (let k = 0; k < n; k++) {
    const length = rng.range(1, 200_000);
    const offset = rng.int(before.length - length);
    const got = Buffer.alloc(length);
    await dev.read(got, offset);
    for (let i = 0; i < length; i++) {
      const b = got[i];
      if (b !== before[offset + i] && b !== after[offset + i]) {
        t.fail(`read during writes: byte ${offset + i} is ${b}, neither old ${before[offset + i]} nor new ${after[offset + i]}`);
        return;
      }
    }
  }
}

async function runRounds(t: import('ava').ExecutionContext, dev: WritableVhdDevice, model: ByteModel, seed: number, rounds: number): Promise<void> {
  const rng = new Rng(seed);
  const blocks = Math.floor(model.size / BLOCK);
  const hot = [0, 1, rng.int(blocks), rng.int(blocks), blocks - 1];
  for (let r = 0; r < rounds; r++) {
    const plan = planRound(rng, model.size, 48, hot);
    const before = Buffer.from(model.buf);
    for (const w of plan) model.write(w.offset, w.data);
    await Promise.all([
      ...plan.map((w, i) => dev.write(w.data, w.offset, { fua: i % 17 === 0 })),
      readDuringRound(t, dev, rng, before, model.buf, 6),
      r % 3 === 2 ? dev.flush() : Promise.resolve(),
    ]);
  }
}

const sha = async (p: string) => createHash('sha256').update(await readFile(p)).digest('hex');

test('concurrent unaligned writes into a dynamic image match a byte model, through the device, check, our export and qemu-img', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 'leaf.vhd');
    const size = 24 * MiB + 7 * SECTOR;
    await createDynamic(p, size);
    const model = new ByteModel(size);
    const dev = await openVhdDevice(p, { writable: true });
    t.is(dev.size, size);
    await runRounds(t, dev, model, 11, 12);
    const back = Buffer.alloc(size);
    await dev.read(back, 0);
    assertSameBytes(t, back, model.buf, 'read back through the device');
    await dev.close();

    await assertChainValid(t, p);
    const modelRaw = join(dir, 'model.raw');
    await writeFile(modelRaw, model.buf);
    const exported = join(dir, 'export.raw');
    await exportRaw(p, exported);
    qemuImg(['compare', '-q', '-f', 'raw', '-F', 'raw', exported, modelRaw]);
    // qemu reads a creator-"tap" dynamic VHD at its footer size, bitmaps ignored.
    qemuImg(['compare', '-q', '-f', 'vpc', '-F', 'raw', p, modelRaw]);
    t.pass('qemu-img compare: identical');
  });
});

test('a differencing chain: reads fall through, writes land in the leaf only, extents follow BATs and bitmaps', async (t) => {
  await withTempDir(async (dir) => {
    const base = join(dir, 'base.vhd');
    const leaf = join(dir, 'leaf.vhd');
    const size = 16 * MiB;
    await createDynamic(base, size);
    const model = new ByteModel(size);
    const held = new Uint8Array(size / SECTOR); // sectors some image holds
    const rng = new Rng(5);
    const mark = (offset: number, length: number) => held.fill(1, Math.floor(offset / SECTOR), Math.ceil((offset + length) / SECTOR));
    for (const [offset, length] of [[0, 3 * SECTOR], [BLOCK + 64 * 1024, 300 * 1024], [5 * BLOCK, BLOCK], [7 * BLOCK - SECTOR, 2 * SECTOR]]) {
      const data = rng.bytes(length);
      await writeAt(base, data, offset);
      model.write(offset, data);
      mark(offset, length);
    }
    await createDifferencing(leaf, base);
    const baseHash = await sha(base);

    const ro = await openVhdDevice(leaf);
    const all = Buffer.alloc(size);
    await ro.read(all, 0);
    assertSameBytes(t, all, model.buf, 'the snapshot reads the base through');
    await ro.close();

    const dev = await openVhdDevice(leaf, { writable: true });
    const writes: PlannedWrite[] = [
      { offset: 1, data: rng.bytes(10) }, // inside base data, sub-sector
      { offset: BLOCK + 1000, data: rng.bytes(5000) }, // a new leaf block over a partial base block
      { offset: 3 * BLOCK + 777, data: rng.bytes(SECTOR) }, // over nothing: edges read as zero
      { offset: 5 * BLOCK + 4096, data: rng.bytes(8192) }, // over a full base block
    ];
    await Promise.all(writes.map((w) => dev.write(w.data, w.offset)));
    for (const w of writes) {
      model.write(w.offset, w.data);
      mark(w.offset, w.data.length);
    }
    await dev.read(all, 0);
    assertSameBytes(t, all, model.buf, 'reads through the chain after leaf writes');

    const expected = extentsOf(held, 0, size);
    t.deepEqual(await collectExtents(dev, 0, size), expected, 'extents of the whole disk');
    const o = BLOCK + 512 * 3;
    t.deepEqual(await collectExtents(dev, o, 3 * BLOCK), extentsOf(held, o, 3 * BLOCK), 'extents of an inner range');
    const one = await dev.extents(3 * BLOCK + 1024, SECTOR);
    t.deepEqual(one, [{ length: SECTOR, hole: false, zero: false }], 'one sector of leaf data');
    await dev.close();

    t.is(await sha(base), baseHash, 'the parent file is byte for byte unchanged');
    await assertChainValid(t, leaf);
    const leafImage = await VhdImage.open(leaf);
    t.deepEqual([0, 1, 3, 5].map((b) => leafImage.hasBlock(b)), [true, true, true, true]);
    t.is(leafImage.allocatedBlocks, 4, 'only the written blocks were allocated in the leaf');
    await leafImage.close();
    const exported = join(dir, 'export.raw');
    await exportRaw(leaf, exported);
    assertSameBytes(t, await readFile(exported), model.buf, 'our export of the chain');
  });
});

/** Extents for [offset, offset+length) from a per-sector held map (what the device should answer). */
function extentsOf(held: Uint8Array, offset: number, length: number): Extent[] {
  const out: Extent[] = [];
  for (let pos = offset; pos < offset + length; ) {
    const kind = held[Math.floor(pos / SECTOR)];
    let end = (Math.floor(pos / SECTOR) + 1) * SECTOR;
    while (end < offset + length && held[end / SECTOR] === kind) end += SECTOR;
    end = Math.min(end, offset + length);
    out.push({ length: end - pos, hole: kind === 0, zero: kind === 0 });
    pos = end;
  }
  return out;
}

/** Asks again after each short answer, as a client does, and merges. */
async function collectExtents(dev: VhdDevice, offset: number, length: number): Promise<Extent[]> {
  const out: Extent[] = [];
  for (let pos = offset; pos < offset + length; ) {
    const part = await dev.extents(pos, offset + length - pos);
    if (part.length === 0) throw new Error('empty extents answer');
    for (const e of part) {
      const last = out[out.length - 1];
      if (last && last.hole === e.hole) last.length += e.length;
      else out.push({ ...e });
      pos += e.length;
    }
  }
  return out;
}

test('a read-only device has no write, flush, trim or zero member and cannot change the file', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 'ro.vhd');
    await createDynamic(p, 4 * MiB);
    await writeAt(p, Buffer.alloc(4096, 7), 8192);
    const before = await sha(p);
    const dev = await openVhdDevice(p);
    for (const m of ['write', 'flush', 'trim', 'zero', 'nativeFua']) t.false(m in dev, `no ${m}`);
    const b = Buffer.alloc(4096);
    await dev.read(b, 8192);
    t.true(b.equals(Buffer.alloc(4096, 7)));
    t.deepEqual(await dev.extents(0, 4 * MiB), [
      { length: 8192, hole: true, zero: true },
      { length: 4096, hole: false, zero: false },
      { length: 4 * MiB - 12288, hole: true, zero: true },
    ]);
    await dev.close();
    t.is(await sha(p), before);
    const err = await t.throwsAsync(dev.read(b, 0));
    t.true(err instanceof DeviceError && err.errno === 'ESHUTDOWN', 'a call after close is ESHUTDOWN');
  });
});

test('many writes to one new block: one allocation, the others wait and write in place', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 'one.vhd');
    await createDynamic(p, 8 * MiB);
    const sizeBefore = (await stat(p)).size;
    const dev = await openVhdDevice(p, { writable: true });
    const rng = new Rng(3);
    const model = new ByteModel(8 * MiB);
    const writes: PlannedWrite[] = [];
    // 128 writes into block 2: every 4 KiB slot of its first half, plus sub-sector writes in its second half.
    for (let k = 0; k < 96; k++) writes.push({ offset: 2 * BLOCK + k * 8192, data: rng.bytes(4096) });
    for (let k = 0; k < 32; k++) writes.push({ offset: 2 * BLOCK + BLOCK / 2 + k * 1000 + 3, data: rng.bytes(997) });
    for (const w of writes) model.write(w.offset, w.data);
    await Promise.all(writes.map((w) => dev.write(w.data, w.offset)));
    const back = Buffer.alloc(8 * MiB);
    await dev.read(back, 0);
    assertSameBytes(t, back, model.buf, 'every write landed');
    await dev.close();
    const img = await VhdImage.open(p);
    t.is(img.allocatedBlocks, 1, 'exactly one block allocated');
    const growth = (await stat(p)).size - sizeBefore;
    t.true(growth > BLOCK && growth <= BLOCK + 8192, `the file grew by one block and its bitmap (${growth} bytes)`);
    const bm = (await img.readBitmap(2))!;
    const expectBits = Buffer.alloc(img.bitmapBytes);
    for (const w of writes) {
      for (let s = Math.floor((w.offset - 2 * BLOCK) / SECTOR); s < Math.ceil((w.offset + w.data.length - 2 * BLOCK) / SECTOR); s++) expectBits[s >> 3] |= 0x80 >> (s & 7);
    }
    t.true(bm.equals(expectBits), 'the bitmap has exactly the written sectors');
    await img.close();
    await assertChainValid(t, p);
  });
});

test('zero: holes cost nothing, data is overwritten in bounded pieces, fast refuses real work', async (t) => {
  await withTempDir(async (dir) => {
    const base = join(dir, 'zb.vhd');
    const leaf = join(dir, 'zl.vhd');
    await createDynamic(base, 64 * MiB);
    await writeAt(base, Buffer.alloc(3 * MiB, 0x5a), 10 * MiB);
    await createDifferencing(leaf, base);
    const dev = await openVhdDevice(leaf, { writable: true });
    const leafSize = (await stat(leaf)).size;
    await dev.zero(0, 8 * MiB, { fast: true });
    await dev.zero(20 * MiB, 40 * MiB, { mayTrim: true });
    t.is((await stat(leaf)).size, leafSize, 'zeroing holes allocates nothing');
    const err = await t.throwsAsync(dev.zero(9 * MiB, 2 * MiB, { fast: true }));
    t.true(err instanceof DeviceError && err.errno === 'ENOTSUP', 'fast zero over data is ENOTSUP');
    await dev.zero(10 * MiB + 100, 2 * MiB, { fua: true });
    const got = Buffer.alloc(4 * MiB);
    await dev.read(got, 9 * MiB);
    const want = Buffer.alloc(4 * MiB);
    want.fill(0x5a, MiB, MiB + 100);
    want.fill(0x5a, 3 * MiB + 100, 4 * MiB);
    assertSameBytes(t, got, want, 'zeroed over the parent data, edges kept');
    await dev.close();
    await assertChainValid(t, leaf);
  });
});

test('close waits for writes in flight, makes them durable, then every call is ESHUTDOWN', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 'c.vhd');
    await createDynamic(p, 16 * MiB);
    const dev = await openVhdDevice(p, { writable: true });
    const rng = new Rng(9);
    const model = new ByteModel(16 * MiB);
    const writes = Array.from({ length: 40 }, (_, k) => ({ offset: k * 400_000 + 1, data: rng.bytes(100_000) }));
    for (const w of writes) model.write(w.offset, w.data);
    const inFlight = writes.map((w) => dev.write(w.data, w.offset));
    await dev.close();
    await Promise.all(inFlight);
    for (const call of [dev.write(Buffer.alloc(512), 0), dev.flush(), dev.zero(0, 512), dev.extents(0, 512)]) {
      const err = await t.throwsAsync(call);
      t.is((err as DeviceError).errno, 'ESHUTDOWN');
    }
    const ro = await openVhdDevice(p);
    const back = Buffer.alloc(16 * MiB);
    await ro.read(back, 0);
    await ro.close();
    assertSameBytes(t, back, model.buf, 'every write before close is in the file');
    await assertChainValid(t, p);
    const img = await VhdImage.open(p);
    t.true(img.batmapTrusted, 'the batmap is valid after close');
    await img.close();
  });
});

test('a settle that need not be durable (the GC reads through this page cache): in-place writes and a block allocated since the last flush both read back through new handles; the image checks clean', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 's.vhd');
    await createDynamic(p, 16 * MiB);
    const dev = (await openVhdDevice(p, { writable: true })) as WritableVhdDevice;
    const model = new ByteModel(16 * MiB);
    const rng = new Rng(12);
    const write = async (offset: number, data: Buffer) => {
      await dev.write(data, offset);
      model.write(offset, data);
    };
    await write(4096, rng.bytes(8192));
    await dev.flush(); // block 0 is on disk, BAT entry and all
    await write(4096 + 512, rng.bytes(3000)); // in place, not flushed
    await write(3 * BLOCK + 700, rng.bytes(5000)); // a new block: its BAT entry is only in memory
    t.true(dev.awaitsBat([3]), 'block 3 waits for its BAT entry');
    await dev.settle({ durable: false });
    const err = await t.throwsAsync(dev.write(Buffer.alloc(512), 0));
    t.is((err as DeviceError).errno, 'ESHUTDOWN', 'settled: nothing is written through it again');
    const img = await VhdImage.open(p);
    t.true(img.hasBlock(3), 'the entry the file lacked was written');
    await img.close();
    const ro = await openVhdDevice(p);
    const back = Buffer.alloc(16 * MiB);
    await ro.read(back, 0);
    await ro.close();
    assertSameBytes(t, back, model.buf, 'another reader of the file sees every write');
    await dev.release();
    await assertChainValid(t, p);
  });
});

test('allocationsDone: resolves once the new blocks being written are in (a GC pause holds the clients then), at once when none is, and at its bound otherwise', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 'a.vhd');
    await createDynamic(p, 16 * MiB);
    const dev = (await openVhdDevice(p, { writable: true })) as WritableVhdDevice;
    const start = performance.now();
    await dev.allocationsDone(10_000);
    t.true(performance.now() - start < 1000, 'nothing allocating: at once');
    const blocks = [0, 1, 2, 5];
    const writes = blocks.map((b) => dev.write(Buffer.alloc(4096, b + 1), b * BLOCK + 8192));
    t.false(dev.batPending, 'nothing allocated yet when the writes start');
    await new Promise((r) => setImmediate(r)); // each write has reached its block's allocation (one at a time: the first is writing)
    await dev.allocationsDone(10_000);
    t.deepEqual(blocks.filter((b) => !dev.awaitsBat([b])), [], 'every block being allocated is in (in memory: its BAT entry waits for a flush)');
    await Promise.all(writes);
    const bound = performance.now();
    const slow = dev.write(Buffer.alloc(4096, 9), 7 * BLOCK);
    await new Promise((r) => setImmediate(r));
    await dev.allocationsDone(1);
    t.true(performance.now() - bound < 1000, 'the bound holds whatever is being allocated');
    await slow;
    await dev.flush();
    t.false(dev.batPending, 'the flush wrote them');
    await dev.close();
    await assertChainValid(t, p);
  });
});
