// The write record a live leaf-coalesce reads (`track-start`, `dirty-since`):
// what `dirty-since` names must be readable by another process opening the
// leaf's file right after the answer. A block the datapath allocated since its
// last flush has its BAT entry in memory only, so then the answer waits for a
// flush; writes into blocks already on disk need none (their data and bitmaps
// are in the page cache every reader of the file shares).
import path from 'node:path';
import test from 'ava';
import { controlCall } from '../../lib/datapath/control.js';
import { VhdImage } from '../../lib/vhd/index.js';
import { activate, deactivate } from '../helpers/live-load.js';
import { MiB, pattern } from '../helpers/model.js';
import { openNbd } from '../helpers/nbd-vdi.js';
import { imagePath } from '../helpers/sr-state.js';
import { withWorld } from '../helpers/world.js';

const BLOCK = 2 * MiB;

test('dirty-since: a block first written since the last flush is in the on-disk BAT when the answer comes; the sectors named read back from the file', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 16 * MiB);
    await activate(w, V);
    const client = await openNbd(ctx, V);
    const control = path.join(ctx.root, 'run', 'sm', 'datapath', `${ctx.sr}.sock`);
    const leaf = imagePath(ctx, V);
    const onDisk = async (block: number) => {
      const image = await VhdImage.open(leaf);
      try {
        return image.hasBlock(block);
      } finally {
        await image.close();
      }
    };
    const write = async (offset: number, data: Buffer) => {
      await client.write(offset, data);
      w.models.get(V)!.write(offset, data);
    };
    try {
      await write(0, pattern(1, 4096));
      const token = (await controlCall(control, { op: 'track-start', vdi: V })).token!;
      t.true(await onDisk(0), 'track-start made block 0 durable (BAT on disk)');

      // Block 0 is on disk: a write into it is named without a flush, and another reader sees it.
      const again = pattern(2, 4096);
      await write(8192, again);
      t.deepEqual((await controlCall(control, { op: 'dirty-since', vdi: V, token })).written, [[16, 8]]);
      const image = await VhdImage.open(leaf);
      try {
        const buf = Buffer.alloc(4096);
        await image.readData(0, 8192, buf);
        t.true(buf.equals(again), 'the data of the write named reads from the file');
        t.true(((await image.readBitmap(0))![0]! & 0x20) !== 0, 'and its bitmap bit is set');
      } finally {
        await image.close();
      }

      // Block 3 is new: allocated in memory, its BAT entry written by a flush only.
      await write(3 * BLOCK + 4096, pattern(3, 4096));
      t.deepEqual((await controlCall(control, { op: 'dirty-since', vdi: V, token })).written, [[(3 * BLOCK + 4096) / 512, 8]]);
      t.true(await onDisk(3), 'the block first written since the last flush is in the on-disk BAT');
    } finally {
      client.close();
      await deactivate(w, V);
    }
    await w.check(t);
  });
});
