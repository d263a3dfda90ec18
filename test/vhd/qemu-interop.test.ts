/**
 * Interop with qemu-img (Debian qemu-utils), an independent VHD implementation.
 * qemu ignores sector bitmaps and parents, so only dynamic images are compared.
 */
import test from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createDynamic, VhdChain, VhdImage } from '../../lib/vhd/index.js';
import {
  assertChainValid,
  assertSameBytes,
  BLOCK,
  ByteModel,
  exportChain,
  KiB,
  MiB,
  qemuImg,
  readChain,
  Rng,
  SECTOR,
  withTempDir,
} from './helpers.js';

interface QemuInfo {
  'virtual-size': number;
  format: string;
}
interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

const info = (p: string) => JSON.parse(qemuImg(['info', '-f', 'vpc', '--output=json', p])) as QemuInfo;

/** Blocks qemu reports as data (it reads BAT entries, not bitmaps), at 2 MiB granularity. */
function qemuDataBlocks(p: string, size: number): number[] {
  const entries = JSON.parse(qemuImg(['map', '-f', 'vpc', '--output=json', p])) as MapEntry[];
  const blocks = new Set<number>();
  let covered = 0;
  for (const e of entries) {
    covered += e.length;
    if (!e.data) continue;
    for (let b = Math.floor(e.start / BLOCK); b * BLOCK < e.start + e.length; b++) blocks.add(b);
  }
  if (covered !== size) throw new Error(`qemu-img map covers ${covered} bytes of ${size}`);
  return [...blocks].sort((a, b) => a - b);
}

async function ourBlocks(p: string): Promise<number[]> {
  const img = await VhdImage.open(p);
  try {
    const out: number[] = [];
    for (let i = 0; i < img.blockCount; i++) if (img.hasBlock(i)) out.push(i);
    return out;
  } finally {
    await img.close();
  }
}

/** A write of one of several shapes: tiny, sub-sector, block-crossing, multi-block. */
function randomWrite(rng: Rng, size: number): { offset: number; data: Buffer } {
  const kind = rng.int(5);
  let len: number;
  if (kind === 0) len = 1;
  else if (kind === 1) len = rng.range(1, 3 * SECTOR);
  else if (kind === 2) len = rng.range(SECTOR, 64 * KiB);
  else if (kind === 3) len = rng.range(BLOCK, 2 * BLOCK + 777);
  else len = rng.range(1, 8 * KiB);
  len = Math.min(len, size);
  let offset: number;
  if (kind === 2) {
    // Straddle a block boundary.
    const boundary = rng.range(1, Math.max(1, Math.floor((size - 1) / BLOCK))) * BLOCK;
    offset = Math.max(0, Math.min(size - len, boundary - rng.int(len)));
  } else {
    offset = rng.int(size - len + 1);
  }
  if (rng.chance(0.3)) offset -= offset % SECTOR;
  return { offset: Math.max(0, Math.min(offset, size - len)), data: rng.bytes(len) };
}

// Sizes: whole MiB, not a multiple of the block, not CHS-representable, a partial last block.
const SIZES = [10 * MiB, 20 * MiB + 3 * SECTOR, 33 * MiB + 7 * SECTOR, 17 * MiB];

test('qemu-img info: our images open as vpc with exactly our virtual size', async (t) => {
  await withTempDir(async (dir) => {
    for (const size of [...SIZES, 100 * MiB, 1024 * MiB + 512]) {
      const p = join(dir, `d${size}.vhd`);
      await createDynamic(p, size);
      const i = info(p);
      t.is(i.format, 'vpc');
      // qemu takes the footer's current size for creator "tap" (XenServer), not the CHS
      // product: for 20 MiB + 1536 the CHS geometry covers fewer bytes than the disk.
      t.is(i['virtual-size'], size, `size ${size}`);
    }
  });
});

for (const seed of [11, 22, 33]) {
  test(`qemu-img convert/map agree with our model after random writes (seed ${seed})`, async (t) => {
    await withTempDir(async (dir) => {
      const rng = new Rng(seed);
      const size = SIZES[seed % SIZES.length];
      const p = join(dir, 'a.vhd');
      await createDynamic(p, size);
      const model = new ByteModel(size);
      const chain = await VhdChain.open(p, { writable: true });
      try {
        for (let k = 0; k < 25; k++) {
          const { offset, data } = randomWrite(rng, size);
          await chain.write(data, offset);
          model.write(offset, data);
        }
      } finally {
        await chain.close();
      }
      const raw = join(dir, 'a.raw');
      qemuImg(['convert', '-f', 'vpc', '-O', 'raw', p, raw]);
      assertSameBytes(t, await readFile(raw), model.buf, 'qemu-img convert of our image');
      assertSameBytes(t, await readChain(p), model.buf, 'our own read');
      t.is(info(p)['virtual-size'], size);
      t.deepEqual(qemuDataBlocks(p, size), await ourBlocks(p), 'qemu-img map data ranges = our allocated blocks');
      // qemu-img compare against the model as a raw file, as a third opinion.
      const modelRaw = join(dir, 'model.raw');
      await writeFile(modelRaw, model.buf);
      qemuImg(['compare', '-f', 'vpc', '-F', 'raw', p, modelRaw]);
      await assertChainValid(t, p);
    });
  });
}

test('an image qemu-img creates reads as zeros through our chain, and takes our writes', async (t) => {
  await withTempDir(async (dir) => {
    for (const mb of [20, 64]) {
      const p = join(dir, `q${mb}.vhd`);
      qemuImg(['create', '-q', '-f', 'vpc', '-o', 'subformat=dynamic', p, `${mb}M`]);
      const qsize = info(p)['virtual-size'];
      // qemu (creator "qemu") rounds the size UP to a CHS geometry and stores that size.
      t.true(qsize >= mb * MiB);
      const img = await VhdImage.open(p);
      t.is(img.virtualSize, qsize, 'our virtual size = qemu\'s');
      t.is(img.footer.creatorApp, 'qemu');
      t.false(img.hasBatmap);
      await img.close();
      const model = new ByteModel(qsize);
      assertSameBytes(t, await readChain(p), model.buf, 'fresh qemu image reads as zeros');
      await assertChainValid(t, p);
      // Our writes into qemu's image; qemu reads them back.
      const rng = new Rng(mb);
      const chain = await VhdChain.open(p, { writable: true });
      for (let k = 0; k < 12; k++) {
        const { offset, data } = randomWrite(rng, qsize);
        await chain.write(data, offset);
        model.write(offset, data);
      }
      await chain.close();
      const raw = join(dir, `q${mb}.raw`);
      qemuImg(['convert', '-f', 'vpc', '-O', 'raw', p, raw]);
      assertSameBytes(t, await readFile(raw), model.buf, 'qemu reads our writes into its image');
      await assertChainValid(t, p);
    }
  });
});

for (const seed of [5, 6]) {
  test(`qemu-img convert raw -> vpc reads back through VhdChain and exportRaw (seed ${seed})`, async (t) => {
    await withTempDir(async (dir) => {
      const rng = new Rng(seed);
      const rawSize = rng.range(10, 40) * MiB + rng.int(4) * SECTOR;
      const content = Buffer.alloc(rawSize);
      for (let k = 0; k < 20; k++) {
        const len = rng.range(1, rng.chance(0.2) ? 3 * BLOCK : 20 * KiB);
        const at = rng.int(rawSize - Math.min(len, rawSize));
        rng.bytes(Math.min(len, rawSize - at)).copy(content, at);
      }
      const raw = join(dir, 'in.raw');
      await writeFile(raw, content);
      const p = join(dir, 'conv.vhd');
      qemuImg(['convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=dynamic', raw, p]);
      const qsize = info(p)['virtual-size'];
      t.true(qsize >= rawSize, 'qemu rounds the size up, never down');
      const expected = Buffer.alloc(qsize);
      content.copy(expected);
      const img = await VhdImage.open(p);
      t.is(img.virtualSize, qsize);
      await img.close();
      assertSameBytes(t, await readChain(p), expected, 'VhdChain.read of qemu\'s image');
      assertSameBytes(t, await exportChain(p, dir), expected, 'exportRaw of qemu\'s image');
      t.deepEqual(await ourBlocks(p), qemuDataBlocks(p, qsize), 'we see the blocks qemu allocated');
      await assertChainValid(t, p);
    });
  });
}
