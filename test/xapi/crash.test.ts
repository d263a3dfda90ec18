// A driver killed after it changed the SR but before xapi's database heard of
// it (SM_FAULT, lib/sr/fault.ts): the next verb completes the change from its
// journal, and sr_scan brings the database back in step, as the established
// SM relies on xapi's scans to do.
import test from 'ava';
import { callDriver, createArgs, request, xml } from '../helpers/sm.js';
import { readTree } from '../helpers/sr-state.js';
import { MiB, withXapiSr } from './standin-world.js';

interface VdiReply {
  uuid: string;
}

test('vdi_create killed before db_introduce: sr_scan introduces the VDI', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const r = await callDriver('vdi_create', request(ctx, 'vdi_create', { args: createArgs(8 * MiB) }), { ...ctx.env, SM_FAULT: 'create-metadata-written' });
    t.is(r.signal, 'SIGKILL');
    t.is(xapi.callsOf('VDI.db_introduce').length, 0, 'killed before xapi heard of it');
    await xml(ctx, 'sr_scan');
    const tree = await readTree(ctx);
    t.is(tree.size, 1, 'the create was completed by recovery');
    const [uuid] = [...tree.keys()];
    t.is(xapi.vdiByUuid(uuid)?.virtual_size, String(8 * MiB), 'and the scan introduced it');
  });
});

test('vdi_snapshot killed before the database heard of it: sr_scan introduces the snapshot and base copy and moves vhd-parent', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(8 * MiB) })) as VdiReply;
    const r = await callDriver('vdi_snapshot', request(ctx, 'vdi_snapshot', { vdi_uuid: vdi }), { ...ctx.env, SM_FAULT: 'snapshot-metadata-written' });
    t.is(r.signal, 'SIGKILL');
    t.is(xapi.vdis.size, 1);
    await xml(ctx, 'sr_scan');
    const tree = await readTree(ctx);
    t.is(tree.size, 3, 'the committed snapshot was kept by recovery');
    const base = tree.get(vdi)!.parent!;
    t.is(xapi.vdis.size, 3);
    t.is(xapi.vdiByUuid(base)!.managed, false);
    t.deepEqual(xapi.vdiByUuid(vdi)!.sm_config, { 'vhd-parent': base });
  });
});
