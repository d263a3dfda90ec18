// Changed-block tracking through the datapath: writes through NBD between two
// snapshots are listed by vdi_list_changed_blocks, every 64 KiB block they
// touched and (after a clean shutdown) no other; snapshots rotate the logs
// under the datapath's pause, deletes merge them, resize grows them.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { MiB, pattern } from '../helpers/model.js';
import { qemuIo } from '../helpers/nbd-vdi.js';
import { withWorld } from '../helpers/world.js';
import { activate, BLOCK, blocksTouched, changedBlocks, deactivate, enableCbt, hasLog, logPath, readVdiLog, union, writeThrough } from './helpers.js';

/** blktap's `cbt-util`, when it is on PATH: then the SR's logs are read with it too. */
const cbtUtil = (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'cbt-util')).find((f) => f !== 'cbt-util' && fs.existsSync(f));
import { NIL_UUID } from '../../lib/cbt/index.js';

test('writes through NBD between two snapshots: exactly the blocks written are listed', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 32 * MiB);
    await w.fill('V', 0, 2 * MiB); // before tracking: never listed
    await enableCbt(w, V);
    t.true(hasLog(w, V), 'enable made the log beside the image');
    await activate(w, V);
    await writeThrough(w, V, [[3 * MiB, pattern(1, 4096)]]);
    const S1 = await w.snapshot('V', 'S1'); // while served: rotated under the pause
    t.true((await readVdiLog(w, S1)).consistent, "the snapshot's log is closed");

    // Writes of every shape: unaligned, crossing a block edge, one byte, big, and a zero.
    const writes: [number, number][] = [
      [100, 10],
      [BLOCK - 1, 2],
      [5 * BLOCK, BLOCK],
      [7 * MiB + 12345, 300_000],
      [31 * MiB + BLOCK - 1, 1],
      [16 * MiB, 2 * MiB],
    ];
    await writeThrough(w, V, writes.map(([offset, length], i) => [offset, pattern(10 + i, length)] as const));
    const io = await qemuIo(ctx, V, ['write -z 20M 64k', 'flush']);
    t.is(io.code, 0, io.stderr);
    w.models.get(V)!.write(20 * MiB, Buffer.alloc(BLOCK));
    t.false((await readVdiLog(w, V)).consistent, 'the log is marked inconsistent while served');

    const S2 = await w.snapshot('V', 'S2');
    const written = union(...writes.map(([o, l]) => blocksTouched(o, l)), blocksTouched(20 * MiB, BLOCK));
    t.deepEqual(await changedBlocks(w, S1, S2), written, 'S1 -> S2: every block written, no other');

    // After S2, more writes; then a clean shutdown.
    await writeThrough(w, V, [[9 * MiB, pattern(40, BLOCK + 1)]]);
    await deactivate(w, V);
    const log = await readVdiLog(w, V);
    t.true(log.consistent, 'a clean close marks the log consistent');
    t.is(log.parent, S2, "the VDI's log follows S2's");
    t.is((await readVdiLog(w, S2)).child, V);
    t.is((await readVdiLog(w, S1)).child, S2);
    t.deepEqual(await changedBlocks(w, S2, V), blocksTouched(9 * MiB, BLOCK + 1), 'S2 -> V: the writes since S2');
    t.deepEqual(await changedBlocks(w, S1, V), union(written, blocksTouched(9 * MiB, BLOCK + 1)), 'S1 -> V: both sets');

    if (cbtUtil) {
      // blktap's own tool reads the SR's logs as the verbs left them (when it is on PATH).
      const get = (u: string, flag: string) => execFileSync(cbtUtil, ['get', '-n', logPath(w, u), flag]);
      t.is(get(S1, '-c').toString().trim(), S2, 'cbt-util: S1 -> S2');
      t.is(get(S2, '-p').toString().trim(), S1, 'cbt-util: S2 <- S1');
      t.is(get(V, '-f').toString().trim(), '1', 'cbt-util: V closed cleanly');
      t.deepEqual(get(S2, '-b'), (await readVdiLog(w, S2)).bitmap, "cbt-util: S2's bitmap");
    }
    const scanned = (await w.scan()) as { uuid: string; cbt_enabled: boolean }[];
    for (const u of [V, S1, S2]) t.true(scanned.find((r) => r.uuid === u)?.cbt_enabled, `scan reports cbt_enabled for ${w.names[u]}`);
    await w.check(t);
  });
});

test('deleting a snapshot in the middle merges its log into the next; resize grows the log; disable removes it', async (t) => {
  await withWorld(async (w) => {
    const V = await w.create('V', 8 * MiB);
    await enableCbt(w, V);
    const S1 = await w.snapshot('V', 'S1');
    await w.write('V', 0, pattern(1, 10)); // straight into the image (not served): tracked only when served
    await activate(w, V);
    await deactivate(w, V);
    const S2 = await w.snapshot('V', 'S2');
    await activate(w, V);
    await writeThrough(w, V, [[2 * MiB, pattern(2, 10)]]);
    await deactivate(w, V);
    const S3 = await w.snapshot('V', 'S3');
    await activate(w, V);
    await writeThrough(w, V, [[6 * MiB, pattern(3, 10)]]);
    await deactivate(w, V);
    const S4 = await w.snapshot('V', 'S4');
    t.deepEqual(await changedBlocks(w, S1, S4), union(blocksTouched(2 * MiB, 10), blocksTouched(6 * MiB, 10)));

    await w.delete('S3');
    t.false(hasLog(w, S3), "the deleted snapshot's log is gone");
    t.is((await readVdiLog(w, S2)).child, S4, 'S2 links to S4 now');
    t.is((await readVdiLog(w, S4)).parent, S2);
    t.deepEqual(await changedBlocks(w, S2, S4), union(blocksTouched(2 * MiB, 10), blocksTouched(6 * MiB, 10)), "S3's changes are kept in S4's log");
    t.deepEqual(await changedBlocks(w, S1, S4), union(blocksTouched(2 * MiB, 10), blocksTouched(6 * MiB, 10)));

    await w.resize('V', 16 * MiB);
    t.is((await readVdiLog(w, V)).size, 16 * MiB, 'resize grew the log');
    await activate(w, V);
    await writeThrough(w, V, [[15 * MiB, pattern(4, 10)]]);
    await deactivate(w, V);
    const S5 = await w.snapshot('V', 'S5');
    t.deepEqual(await changedBlocks(w, S4, S5), blocksTouched(15 * MiB, 10), 'a block past the old size is tracked');
    t.deepEqual(await changedBlocks(w, S1, S5), union(blocksTouched(2 * MiB, 10), blocksTouched(6 * MiB, 10), blocksTouched(15 * MiB, 10)), 'older, smaller logs are zero-extended');

    await w.s.call('vdi_disable_cbt', { vdi_uuid: V, vdi_location: V });
    t.false(hasLog(w, V));
    t.is((await readVdiLog(w, S5)).child, V, "the snapshots' logs stay");
    t.is((await w.s.fault('vdi_list_changed_blocks', { vdi_uuid: S5, vdi_location: S5, args: [V] })).code, 46, 'V has no log any more: VDIUnavailable');
    t.is((await w.s.fault('vdi_list_changed_blocks', { vdi_uuid: S1, vdi_location: S1, args: [] })).code, 46, 'no target: refused');
    t.is((await w.s.fault('vdi_list_changed_blocks', { vdi_uuid: S1, vdi_location: S1, args: ['OpaqueRef:x'] })).code, 46, 'a target that is no uuid: refused');
    t.is((await w.s.fault('vdi_enable_cbt', { vdi_uuid: S1, vdi_location: S1 })).code, 46, 'enable on a snapshot: refused');
    const clone = await w.clone('V', 'C');
    t.false(hasLog(w, clone), 'a clone starts no log');
    t.is((await readVdiLog(w, S1)).parent, NIL_UUID);
    await w.check(t);
  });
});

test('data destroy keeps the snapshot as a cbt_metadata VDI that still answers; deleting it merges its log', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 8 * MiB);
    await enableCbt(w, V);
    const S1 = await w.snapshot('V', 'S1');
    await activate(w, V);
    await writeThrough(w, V, [[MiB, pattern(1, BLOCK * 3)]]);
    const S2 = await w.snapshot('V', 'S2');
    await deactivate(w, V);

    t.is((await w.s.fault('vdi_data_destroy', { vdi_uuid: V, vdi_location: V })).code, 46, 'not a snapshot: refused');
    await w.s.call('vdi_data_destroy', { vdi_uuid: S1, vdi_location: S1 });
    w.forget('S1');
    const scanned = (await w.scan()) as { uuid: string; type: string; cbt_enabled: boolean; virtual_size: number }[];
    const s1 = scanned.find((r) => r.uuid === S1);
    t.is(s1?.type, 'cbt_metadata', 'S1 is a cbt_metadata VDI now');
    t.true(s1?.cbt_enabled);
    t.is(s1?.virtual_size, 8 * MiB, 'its size is its log\'s');
    t.deepEqual(await changedBlocks(w, S1, S2), blocksTouched(MiB, BLOCK * 3), 'its log still answers');
    t.is((await w.s.fault('vdi_snapshot', { vdi_uuid: S1, vdi_location: S1 })).code, 144, 'no data: other verbs see no VDI');

    await w.s.call('vdi_delete', { vdi_uuid: S1, vdi_location: S1 });
    delete w.names[S1];
    t.false(hasLog(w, S1));
    t.is((await readVdiLog(w, S2)).parent, NIL_UUID);
    await w.check(t);
  });
});

test('VDI_CONFIG_CBT is advertised by FileSR', async (t) => {
  await withWorld(async (w) => {
    const info = (await w.s.call('sr_get_driver_info')) as { capabilities: string[] };
    t.is(info.capabilities.filter((c) => c === 'VDI_CONFIG_CBT').length, 1);
  });
});

test('enable and disable while the VDI is served: the datapath is paused and reopened with (then without) the log', async (t) => {
  await withWorld(async (w) => {
    const V = await w.create('V', 8 * MiB);
    await activate(w, V);
    await writeThrough(w, V, [[0, pattern(1, 10)]]); // before tracking
    await enableCbt(w, V);
    t.false((await readVdiLog(w, V)).consistent, 'the datapath holds the new log open');
    const S1 = await w.snapshot('V', 'S1');
    await writeThrough(w, V, [[3 * MiB, pattern(2, 10)]]);
    const S2 = await w.snapshot('V', 'S2');
    t.deepEqual(await changedBlocks(w, S1, S2), blocksTouched(3 * MiB, 10));
    await w.s.call('vdi_disable_cbt', { vdi_uuid: V, vdi_location: V });
    t.false(hasLog(w, V), 'removed while served');
    await writeThrough(w, V, [[5 * MiB, pattern(3, 10)]]);
    t.false(hasLog(w, V), 'the datapath wrote no log back');
    await deactivate(w, V);
    t.false(hasLog(w, V), 'nor at its close');
    await w.check(t);
  });
});
