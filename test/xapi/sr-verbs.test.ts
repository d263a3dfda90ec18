// sr_scan, sr_update and sr_attach keep the stand-in xapi's database in step
// (reference §4); without an endpoint, or without a session, the SM runs
// standalone and SMlog says so.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { createArgs, makeSmEnv, smVhd, xml, SESSION_SECRET } from '../helpers/sm.js';
import { imagePath } from '../helpers/sr-state.js';
import { XapiStandin } from '../helpers/xapi-standin.js';
import { HOST_REF, MiB, SR_REF, withXapiSr, xapiSocket } from './standin-world.js';

interface VdiReply {
  uuid: string;
}

async function vhdTool(args: string[]): Promise<void> {
  const r = await smVhd(args);
  if (r.code !== 0) throw new Error(`sm-vhd ${args.join(' ')}: ${r.stderr}`);
}

test('sr_scan introduces images made behind the SM, forgets removed ones, skips hidden leaves, fixes drifted records', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const { uuid: kept } = (await xml(ctx, 'vdi_create', { args: createArgs(8 * MiB) })) as VdiReply;
    const { uuid: removed } = (await xml(ctx, 'vdi_create', { args: createArgs(8 * MiB) })) as VdiReply;
    const made = randomUUID();
    const hiddenLeaf = randomUUID();
    await vhdTool(['create', '-n', imagePath(ctx, made), '-s', '24']);
    await vhdTool(['create', '-n', imagePath(ctx, hiddenLeaf), '-s', '4']);
    await vhdTool(['set', '-n', imagePath(ctx, hiddenLeaf), '-f', 'hidden', '-v', '1']);
    fs.rmSync(imagePath(ctx, removed));
    xapi.vdiByUuid(kept)!.virtual_size = '12345';
    xapi.calls.length = 0;

    await xml(ctx, 'sr_scan');

    const rec = xapi.vdiByUuid(made);
    t.truthy(rec, 'the image made behind the SM is introduced');
    t.is(rec!.virtual_size, String(24 * MiB));
    t.is(rec!.managed, true);
    t.is(rec!.location, made);
    t.is(xapi.vdiByUuid(removed), undefined, 'the removed image is forgotten');
    t.is(xapi.vdiByUuid(hiddenLeaf), undefined, 'a hidden leaf is not introduced');
    t.is(xapi.vdiByUuid(kept)!.virtual_size, String(8 * MiB), 'a drifted record is updated');
    const order = xapi.calls.map((c) => c.method).filter((m) => ['VDI.db_introduce', 'VDI.db_forget', 'VDI.set_virtual_size'].includes(m));
    t.deepEqual(order, ['VDI.db_introduce', 'VDI.db_forget', 'VDI.set_virtual_size'], 'new, gone, then existing, as the established scan');
    t.is(xapi.srs.get(SR_REF)!.virtual_allocation, String(32 * MiB), 'virtual_allocation: the non-hidden images');

    xapi.calls.length = 0;
    await xml(ctx, 'sr_scan');
    t.deepEqual(
      xapi.calls.map((c) => c.method).filter((m) => !m.startsWith('SR.') && m !== 'VDI.get_all_records_where'),
      [],
      'a second scan finds everything in step and writes no VDI',
    );
  });
});

test('sr_scan keeps a base copy unmanaged and the parent read-only', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(8 * MiB) })) as VdiReply;
    await xml(ctx, 'vdi_snapshot', { vdi_uuid: vdi });
    // The toolstack lost every record (say, a database restored from backup): the scan brings them back.
    xapi.vdis.clear();
    await xml(ctx, 'sr_scan');
    t.is(xapi.vdis.size, 3);
    const base = [...xapi.vdis.values()].find((v) => v.managed === false);
    t.truthy(base, 'the base copy is unmanaged');
    t.is(base!.read_only, true);
    t.deepEqual(xapi.vdiByUuid(vdi)!.sm_config, { 'vhd-parent': base!.uuid });
  });
});

test('sr_update sets the SR sizes as strings', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    xapi.calls.length = 0;
    await xml(ctx, 'sr_update');
    const methods = xapi.calls.map((c) => c.method);
    t.deepEqual(methods, ['SR.get_virtual_allocation', 'SR.set_virtual_allocation', 'SR.set_physical_size', 'SR.set_physical_utilisation']);
    const sizeCall = xapi.callsOf('SR.set_physical_size')[0];
    t.is(typeof sizeCall.params[1], 'string', 'int64 travels as a string');
    const { blocks, bsize, bfree } = fs.statfsSync(ctx.location);
    t.is(xapi.srs.get(SR_REF)!.physical_size, String(blocks * bsize));
    t.true(Number(xapi.srs.get(SR_REF)!.physical_utilisation) >= (blocks - bfree) * bsize * 0.5);
  });
});

test('sr_attach clears this host tags and paused, marks the SR dirty, and scans on the master', async (t) => {
  await withXapiSr(
    async (ctx, xapi) => {
      const stale = randomUUID();
      await vhdTool(['create', '-n', imagePath(ctx, stale), '-s', '4']);
      const other = 'OpaqueRef:host-2';
      const ref = xapi.putVdi({ uuid: stale, location: stale, SR: SR_REF, sm_config: { [`host_${HOST_REF}`]: 'RW', [`host_${other}`]: 'RO', paused: 'true' }, virtual_size: String(4 * MiB) });
      xapi.srs.get(SR_REF)!.other_config = { dirty: '' };
      await xml(ctx, 'sr_attach');
      t.deepEqual(xapi.vdis.get(ref)!.sm_config, { [`host_${other}`]: 'RO' }, "only this host's tag and paused go");
      t.deepEqual(xapi.srs.get(SR_REF)!.other_config, { dirty: '' }, 'dirty (already there: MAP_DUPLICATE_KEY taken as done)');
      t.is(xapi.callsOf('SR.add_to_other_config').length, 1);
      t.is(xapi.vdis.size, 1, 'the scan after attach found the image already known');
      const made = randomUUID();
      await xml(ctx, 'sr_detach');
      await vhdTool(['create', '-n', imagePath(ctx, made), '-s', '4']);
      await xml(ctx, 'sr_attach');
      t.truthy(xapi.vdiByUuid(made), 'an image made while detached is introduced by the scan after attach');
    },
    { attach: false },
  );
});

test('standalone without an endpoint: verbs work and SMlog says so', async (t) => {
  const ctx = await makeSmEnv();
  try {
    await xml(ctx, 'sr_create', { args: ['0'] });
    await xml(ctx, 'sr_attach');
    const { uuid } = (await xml(ctx, 'vdi_create', { args: createArgs(8 * MiB) })) as VdiReply;
    await xml(ctx, 'vdi_snapshot', { vdi_uuid: uuid });
    const log = fs.readFileSync(ctx.smlog, 'utf8');
    t.true(log.includes(`XenAPI: standalone (no endpoint at ${xapiSocket(ctx)})`));
    t.false(log.includes('keeping the toolstack database in step'));
  } finally {
    await ctx.cleanup();
  }
});

test('an endpoint but no session_ref (a JSON-RPC toolstack): standalone, nothing sent', async (t) => {
  const ctx = await makeSmEnv();
  const xapi = await XapiStandin.start(xapiSocket(ctx), { smSessions: [{ ref: SESSION_SECRET, sr: SR_REF }], srs: [{ ref: SR_REF, uuid: ctx.sr }] });
  try {
    await xml(ctx, 'sr_create', { args: ['0'], session_ref: undefined });
    await xml(ctx, 'sr_attach', { session_ref: undefined });
    await xml(ctx, 'vdi_create', { args: createArgs(8 * MiB), session_ref: undefined });
    t.is(xapi.calls.length, 0);
    t.true(fs.readFileSync(ctx.smlog, 'utf8').includes('carries no session_ref'));
    t.true(fs.existsSync(path.join(ctx.root, 'var', 'lib', 'xcp', 'xapi')));
  } finally {
    await xapi.close();
    await ctx.cleanup();
  }
});
