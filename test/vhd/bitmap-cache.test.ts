// A bitmap read that overlaps a bitmap write must not leave the older bitmap in
// the cache: the next read-modify-write would build on it and drop bits.
import { join } from 'node:path';
import test from 'ava';
import { createDynamic, FileIO, VhdImage, writeAt, type PositionalIO } from '../../lib/vhd/index.js';
import { MiB, withTempDir } from './helpers.js';

/** A file whose reads at one offset finish only when the test says so; `read` says when the bytes were read. */
function slowReadsAt(io: FileIO, offset: () => number, gate: Promise<void>, read: () => void): PositionalIO {
  return {
    path: io.path,
    writable: io.writable,
    isDevice: io.isDevice,
    async read(buf, position) {
      await io.read(buf, position);
      if (position === offset()) {
        read();
        await gate;
      }
    },
    write: (bufs, position) => io.write(bufs, position),
    size: () => io.size(),
    truncate: (n) => io.truncate(n),
    sync: () => io.sync(),
    close: () => io.close(),
  };
}

test('a bitmap read overtaken by a bitmap write does not cache the older bitmap', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 'c.vhd');
    await createDynamic(p, 8 * MiB);
    await writeAt(p, Buffer.alloc(512, 1), 0); // block 0, sector 0 present
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    let readDone!: () => void;
    const staleRead = new Promise<void>((r) => (readDone = r));
    let img: VhdImage | undefined;
    const image = (img = await VhdImage.fromIO(slowReadsAt(await FileIO.open(p, true), () => (img ? img.bitmapOffset(0) : -1), gate, readDone)));
    const stale = image.readBitmap(0); // reads the old bitmap, finishes late
    await staleRead; // the old bytes are read before the write below starts
    const newer = Buffer.alloc(image.bitmapBytes);
    newer[0] = 0xc0; // sectors 0 and 1
    await image.writeBitmap(0, newer);
    open();
    t.is((await stale)![0], 0x80, 'the overlapping read returns what it read');
    t.is((await image.readBitmap(0))![0], 0xc0, 'the cache holds the newer bitmap');
    await image.close();
  });
});
