/**
 * Growing images: in place within the BAT room, rewritten beside the original
 * beyond it; content, identity, parent links and checks survive; bad sizes are refused.
 */
import test from 'ava';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  createDifferencing,
  createDynamic,
  resizeImage,
  VhdChain,
  VhdError,
  VhdImage,
  writeAt,
} from '../../lib/vhd/index.js';
import { encodeBatmapHeader, newBatmapHeader, batmapChecksum } from '../../lib/vhd/format/batmap.js';
import { DiskType } from '../../lib/vhd/format/constants.js';
import { encodeFooter, newFooter } from '../../lib/vhd/format/footer.js';
import { geometryFor } from '../../lib/vhd/format/geometry.js';
import { encodeHeader, newHeader } from '../../lib/vhd/format/header.js';
import {
  assertChainValid,
  assertSameBytes,
  BLOCK,
  ByteModel,
  HAVE_REF,
  MiB,
  qemuImg,
  readChain,
  REF_VHD_UTIL,
  Rng,
  run,
  SECTOR,
  withTempDir,
} from './helpers.js';

async function write(p: string, model: ByteModel, offset: number, data: Buffer): Promise<void> {
  await writeAt(p, data, offset);
  model.write(offset, data);
}

test('grow within the BAT room: same file, only the footers change; geometry follows', async (t) => {
  await withTempDir(async (dir) => {
    const rng = new Rng(1);
    const p = join(dir, 'a.vhd');
    const model = new ByteModel(10 * MiB);
    await createDynamic(p, 10 * MiB, { maxSize: 64 * MiB });
    await write(p, model, 10 * MiB - BLOCK - 100, rng.bytes(BLOCK + 100)); // fills block 4 and the end of 3
    const before = await readFile(p);
    const { moved } = await resizeImage(p, 37 * MiB + 3 * SECTOR);
    t.false(moved);
    model.grow(37 * MiB + 3 * SECTOR);
    const after = await readFile(p);
    t.is(after.length, before.length);
    // Outside the two footers (and the batmap header, whose checksum is re-sealed) nothing moved.
    const end = before.length - 512;
    t.true(after.subarray(1536, 0x800).equals(before.subarray(1536, 0x800)), 'BAT unchanged');
    t.true(after.subarray(0xa00, end).equals(before.subarray(0xa00, end)), 'map and data unchanged');
    const img = await VhdImage.open(p);
    t.is(img.virtualSize, 37 * MiB + 3 * SECTOR);
    t.deepEqual(img.footer.geometry, geometryFor(37 * MiB + 3 * SECTOR));
    t.true(img.batmapTrusted);
    await img.close();
    assertSameBytes(t, await readChain(p), model.buf, 'content after growing');
    await write(p, model, 36 * MiB, rng.bytes(MiB)); // the new area takes writes
    assertSameBytes(t, await readChain(p), model.buf, 'content after writing the new area');
    t.is(JSON.parse(qemuImg(['info', '-f', 'vpc', '--output=json', p]))['virtual-size'], model.size);
    const raw = join(dir, 'a.raw');
    qemuImg(['convert', '-f', 'vpc', '-O', 'raw', p, raw]);
    assertSameBytes(t, await readFile(raw), model.buf, 'qemu reads the grown image');
    await assertChainValid(t, p);
  });
});

test('grow beyond the BAT room: rewritten beside and renamed over; uuid kept, children still link', async (t) => {
  await withTempDir(async (dir) => {
    const rng = new Rng(2);
    const base = join(dir, 'base.vhd');
    const child = join(dir, 'child.vhd');
    const model = new ByteModel(6 * MiB);
    await createDynamic(base, 6 * MiB);
    await write(base, model, 0, rng.bytes(BLOCK)); // a full block (batmap bit)
    await write(base, model, 5 * MiB + 7, rng.bytes(3000));
    await createDifferencing(child, base);
    await write(child, model, BLOCK - 1, rng.bytes(2));
    await write(child, model, 4 * MiB, rng.bytes(BLOCK));
    const before = await VhdImage.open(child);
    const uuidBefore = before.uuid;
    await before.close();

    const { moved } = await resizeImage(child, 30 * MiB);
    t.true(moved);
    model.grow(30 * MiB);
    t.deepEqual((await readdir(dir)).sort(), ['base.vhd', 'child.vhd'], 'no temp file left');
    const img = await VhdImage.open(child);
    t.is(img.uuid, uuidBefore);
    t.is(img.header.maxTableEntries, 15);
    t.true(img.isBlockFull(2), 'the batmap survives the rewrite');
    await img.close();
    assertSameBytes(t, await readChain(child), model.buf, 'chain after rewrite');
    await write(child, model, 29 * MiB, rng.bytes(MiB));
    assertSameBytes(t, await readChain(child), model.buf, 'chain after writing the new area');
    await assertChainValid(t, child);

    // The base grows too (a parent the chain depends on keeps its uuid).
    t.true((await resizeImage(base, 30 * MiB)).moved);
    assertSameBytes(t, await readChain(child), model.buf, 'chain after rewriting the parent');
    await assertChainValid(t, child);
  });
});

test('a qemu-created image grown beyond its BAT still reads in qemu and in ours', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 'q.vhd');
    const qsize = (f: string) => JSON.parse(qemuImg(['info', '-f', 'vpc', '--output=json', f]))['virtual-size'] as number;
    qemuImg(['create', '-q', '-f', 'vpc', '-o', 'subformat=dynamic', p, '10M']);
    const model = new ByteModel(qsize(p));
    await write(p, model, 3 * MiB + 5, new Rng(3).bytes(MiB));
    // For creator "qemu" qemu takes the size from the CHS geometry, not the footer: grow to
    // a size the geometry represents exactly (the one qemu itself picks for 25M).
    const sizer = join(dir, 'sizer.vhd');
    qemuImg(['create', '-q', '-f', 'vpc', '-o', 'subformat=dynamic', sizer, '25M']);
    const target = qsize(sizer);
    t.true((await resizeImage(p, target)).moved);
    model.grow(target);
    t.is(qsize(p), target);
    const raw = join(dir, 'q.raw');
    qemuImg(['convert', '-f', 'vpc', '-O', 'raw', p, raw]);
    assertSameBytes(t, await readFile(raw), model.buf, 'qemu after our resize');
    assertSameBytes(t, await readChain(p), model.buf, 'ours after our resize');
    await assertChainValid(t, p);
  });
});

/** A valid dynamic image whose BAT is NOT at blktap's 1536 (other writers put it elsewhere). */
async function imageWithBatAt(path: string, size: number, tableOffset: number, blocks: Map<number, Buffer>): Promise<void> {
  const entries = Math.ceil(size / BLOCK);
  const footer = encodeFooter(newFooter({ size, diskType: DiskType.Dynamic, uuid: Buffer.alloc(16, 0x42), timestamp: 1 }));
  const header = newHeader(entries);
  header.tableOffset = tableOffset;
  const batBytes = Math.ceil((entries * 4) / SECTOR) * SECTOR;
  const bat = Buffer.alloc(batBytes, 0);
  bat.fill(0xff, 0, entries * 4);
  const bmHeaderAt = tableOffset + batBytes;
  const bm = newBatmapHeader(bmHeaderAt, entries);
  const map = Buffer.alloc(bm.sizeSectors * SECTOR);
  bm.checksum = batmapChecksum(map, size);
  const parts: Buffer[] = [footer, encodeHeader(header), Buffer.alloc(tableOffset - 1536)];
  let at = bmHeaderAt + SECTOR + map.length;
  const blockParts: Buffer[] = [];
  for (const [i, data] of blocks) {
    const bitmap = Buffer.alloc(SECTOR, 0xff);
    bat.writeUInt32BE(at / SECTOR, i * 4);
    blockParts.push(bitmap, data);
    at += SECTOR + BLOCK;
  }
  parts.push(bat, encodeBatmapHeader(bm), map, ...blockParts, footer);
  await writeFile(path, Buffer.concat(parts));
}

test('rewriting an image whose BAT is not at 1536 keeps header and BAT consistent', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 'odd.vhd');
    const rng = new Rng(4);
    const model = new ByteModel(4 * MiB);
    const b1 = rng.bytes(BLOCK);
    model.write(BLOCK, b1);
    await imageWithBatAt(p, 4 * MiB, 8192, new Map([[1, b1]]));
    assertSameBytes(t, await readChain(p), model.buf, 'the hand-made image reads');
    await assertChainValid(t, p);
    t.true((await resizeImage(p, 12 * MiB)).moved);
    model.grow(12 * MiB);
    assertSameBytes(t, await readChain(p), model.buf, 'after the rewrite');
    await assertChainValid(t, p);
  });
});

test('bad sizes and shrinking are refused without touching the file; same size is a no-op', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 'a.vhd');
    await createDynamic(p, 8 * MiB);
    await writeAt(p, Buffer.from('x'), 0);
    const bytes = await readFile(p);
    for (const size of [4 * MiB, 0, -1, Number.NaN, 1.5, 2 ** 60, 2041 * 1024 * MiB]) {
      const err = await t.throwsAsync(resizeImage(p, size));
      t.true(err instanceof VhdError && err.kind === 'invalid-argument', `${size}: ${err}`);
      t.true((await readFile(p)).equals(bytes), `${size}: file untouched`);
    }
    t.deepEqual(await resizeImage(p, 8 * MiB), { moved: false });
    t.deepEqual(await resizeImage(p, 8 * MiB - 100), { moved: false }, 'rounds up to the same sector count');
    t.true((await readFile(p)).equals(bytes), 'no-op leaves the bytes');
  });
});

test('growing across a multiple of 8 GiB re-seals the batmap checksum (blktap\'s checksum range moves)', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 'big.vhd');
    await createDynamic(p, 8196 * MiB, { maxSize: 8300 * MiB });
    await writeAt(p, Buffer.alloc(BLOCK, 0x11), 4096 * BLOCK); // full block whose map byte is 512
    let img = await VhdImage.open(p);
    t.true(img.batmapTrusted);
    t.false(img.isBlockFull(4096), 'its map bit lies outside the checksummed sector: not trusted');
    await img.close();
    t.false((await resizeImage(p, 8208 * MiB)).moved);
    img = await VhdImage.open(p);
    t.true(img.batmapTrusted, 'checksum matches the new range');
    t.true(img.isBlockFull(4096), 'now covered');
    await img.close();
    await assertChainValid(t, p);
    const chain = await VhdChain.open(p);
    const buf = Buffer.alloc(BLOCK);
    await chain.read(buf, 4096 * BLOCK);
    await chain.close();
    t.true(buf.equals(Buffer.alloc(BLOCK, 0x11)));
    if (HAVE_REF) {
      const r = await run(REF_VHD_UTIL, ['check', '-n', p, '-b']);
      t.is(r.code, 0, r.stdout);
    }
  });
});

test('the grown size is what qemu and query see, and the growth is durable across reopen', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 'a.vhd');
    await createDynamic(p, 3 * MiB);
    t.true((await resizeImage(p, 5 * MiB + 512)).moved, '2 BAT entries -> 3: rewritten');
    t.is((await stat(p)).size, 3584, 'an empty image is still just its metadata');
    const img = await VhdImage.open(p);
    t.is(img.virtualSize, 5 * MiB + 512);
    await img.close();
    t.is(JSON.parse(qemuImg(['info', '-f', 'vpc', '--output=json', p]))['virtual-size'], 5 * MiB + 512);
    await assertChainValid(t, p);
  });
});
