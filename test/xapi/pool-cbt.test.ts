// Changed-block tracking switched on and off by the SR master (host A) for a
// VDI that host B serves: xapi sends the CBT verbs to the master only, so the
// master pauses B's datapath through the toolstack (tapdisk-pause plugin), as
// for a snapshot, and B reopens the VDI with its log as it is afterwards. The
// toolstack is the stand-in (test/helpers/xapi-standin.ts: call_plugin runs
// B's real plugin executable); B's datapath is a real sm-datapath over NBD.
import fs from 'node:fs';
import test from 'ava';
import { CBT_BLOCK_SIZE, fromXapiBase64 } from '../../lib/cbt/index.js';
import { setBlocks } from '../cbt/helpers.js';
import { MiB, pattern } from '../helpers/model.js';
import { openNbd } from '../helpers/nbd-vdi.js';
import { xml } from '../helpers/sm.js';
import { activeOnB, createOnA, OTHER_HOST_REF, vdiArgs, withPool } from './pool-world.js';

test('A enables CBT on a VDI B writes to: B paused and unpaused through the plugin, its later writes are logged; A disables it the same way', async (t) => {
  await withPool(async (p) => {
    const V = await createOnA(p, 32 * MiB);
    await activeOnB(p, V);
    const c = await openNbd(p.b, V);
    await c.write(0, pattern(1, MiB));

    t.is(await xml(p.a, 'vdi_enable_cbt', vdiArgs(V)), null);
    t.deepEqual(p.pluginRuns, ['pause -> True', 'unpause -> True'], 'B was paused for the log to be made');
    const plugin = p.xapi.callsOf('host.call_plugin');
    t.deepEqual(plugin.map((x) => [x.params[0], x.params[2]]), [[OTHER_HOST_REF, 'pause'], [OTHER_HOST_REF, 'unpause']]);
    t.false('paused' in (p.xapi.vdiByUuid(V)!.sm_config as Record<string, string>), 'paused is gone');
    const log = `${p.a.location}/${V}.cbtlog`;
    t.true(fs.existsSync(log), 'the log exists');

    // Between two snapshots, exactly what B wrote shows as changed: B's datapath logs its writes (the
    // live VDI's own log is held open, so listing up to the VDI itself would count every block).
    const { uuid: S } = (await xml(p.a, 'vdi_snapshot', vdiArgs(V))) as { uuid: string };
    await c.write(8 * MiB, pattern(2, 4096));
    await c.write(20 * MiB + 5, pattern(3, 100));
    const { uuid: S2 } = (await xml(p.a, 'vdi_snapshot', vdiArgs(V))) as { uuid: string };
    const changed = setBlocks(fromXapiBase64((await xml(p.a, 'vdi_list_changed_blocks', vdiArgs(S, [S2]))) as string));
    t.deepEqual(changed, [(8 * MiB) / CBT_BLOCK_SIZE, Math.floor((20 * MiB) / CBT_BLOCK_SIZE)], "exactly the blocks B wrote after the snapshot");

    t.is(await xml(p.a, 'vdi_disable_cbt', vdiArgs(V)), null);
    t.deepEqual(p.pluginRuns.slice(2), Array(3).fill(['pause -> True', 'unpause -> True']).flat(), 'the two snapshots, then the disable, paused B');
    t.false(fs.existsSync(log), 'the log is gone');
    await c.write(MiB, pattern(4, MiB));
    t.true((await c.read(0, 2 * MiB)).equals(Buffer.concat([pattern(1, MiB), pattern(4, MiB)])), 'B serves on, untracked');
    c.close();
    await p.onB('vdi_deactivate', vdiArgs(V));
    await p.onB('vdi_detach', vdiArgs(V));
  });
});

test('A deletes a tracked snapshot whose log merges into the log of a VDI B writes to: B paused through the plugin for the merge, no block B wrote goes unlisted', async (t) => {
  await withPool(async (p) => {
    const V = await createOnA(p, 32 * MiB);
    t.is(await xml(p.a, 'vdi_enable_cbt', vdiArgs(V)), null);
    await activeOnB(p, V);
    const c = await openNbd(p.b, V);
    const snapshot = async () => ((await xml(p.a, 'vdi_snapshot', vdiArgs(V))) as { uuid: string }).uuid;
    const S1 = await snapshot();
    await c.write(8 * MiB, pattern(1, 4096));
    const S2 = await snapshot();
    await c.write(20 * MiB + 5, pattern(2, 100));

    // S2's log merges into V's, which B's datapath holds open: B pauses (its log settled on disk), A merges, B reads it again.
    const before = p.pluginRuns.length;
    t.is(await xml(p.a, 'vdi_delete', vdiArgs(S2)), null);
    t.deepEqual(p.pluginRuns.slice(before), ['pause -> True', 'unpause -> True'], 'B was paused for the merge');
    t.false(fs.existsSync(`${p.a.location}/${S2}.cbtlog`), "S2's log is gone");
    t.false('paused' in (p.xapi.vdiByUuid(V)!.sm_config as Record<string, string>), 'paused is gone');
    t.is(p.xapi.vdiByUuid(S2), undefined, 'S2 is forgotten');

    await c.write(MiB, pattern(3, 4096));
    const S3 = await snapshot();
    const changed = setBlocks(fromXapiBase64((await xml(p.a, 'vdi_list_changed_blocks', vdiArgs(S1, [S3]))) as string));
    t.deepEqual(changed, [MiB / CBT_BLOCK_SIZE, (8 * MiB) / CBT_BLOCK_SIZE, Math.floor((20 * MiB) / CBT_BLOCK_SIZE)], "S2's marks and B's later writes, all listed from S1");
    t.true((await c.read(8 * MiB, 4096)).equals(pattern(1, 4096)), 'B serves on');
    c.close();
    await p.onB('vdi_deactivate', vdiArgs(V));
    await p.onB('vdi_detach', vdiArgs(V));
  });
});
