// The VDI verbs, through the real FileSR executable called as xapi calls it
// (argv XML-RPC with session_ref), keep the stand-in xapi's database in step.
import fs from 'node:fs';
import test from 'ava';
import { createArgs, SESSION_SECRET, SmFault, xml, callDriver, request, smVhd } from '../helpers/sm.js';
import { imagePath, readTree } from '../helpers/sr-state.js';
import { HOST_REF, MiB, SR_REF, withXapiSr } from './standin-world.js';

interface VdiReply {
  uuid: string;
  location: string;
}

test('vdi_create introduces the VDI with the 19 arguments, and the SR sizes follow', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const reply = (await xml(ctx, 'vdi_create', { args: createArgs(64 * MiB, 'data disk'), vdi_type: 'user', vdi_sm_config: { key_hash: 'abc', other: 'x' } })) as VdiReply;
    const rec = xapi.vdiByUuid(reply.uuid);
    t.truthy(rec, 'the stand-in has the VDI by uuid');
    t.is(rec!.location, reply.uuid);
    t.is(rec!.name_label, 'data disk');
    t.is(rec!.name_description, 'Created by a test');
    t.is(rec!.SR, SR_REF);
    t.is(rec!.type, 'user');
    t.is(rec!.virtual_size, String(64 * MiB));
    t.is(rec!.physical_utilisation, String(fs.statSync(imagePath(ctx, reply.uuid)).size));
    t.is(rec!.read_only, false);
    t.is(rec!.managed, true);
    t.is(rec!.sharable, false);
    t.deepEqual(rec!.sm_config, { key_hash: 'abc' }, 'only the pass-through keys of vdi_sm_config');
    t.is(rec!.metadata_of_pool, 'OpaqueRef:NULL');
    t.is(rec!.snapshot_of, 'OpaqueRef:NULL');
    t.is(rec!.on_boot, 'persist');
    const introduce = xapi.callsOf('VDI.db_introduce');
    t.is(introduce.length, 1);
    t.is(introduce[0].params.length, 19, 'db_introduce carries all 19 positional arguments');
    t.is(introduce[0].session, SESSION_SECRET, "the call's session_ref used as given");
    t.is(introduce[0].headers['subtask-of'], 'DummyRef:|task|vdi_create');
    t.is(introduce[0].headers.originator, 'SM');
    t.is(xapi.callsOf('session.login_with_password').length, 0, 'a driver never logs in');
    t.is(xapi.callsOf('session.logout').length, 0, 'nor out');
    const sr = xapi.srs.get(SR_REF)!;
    t.is(sr.virtual_allocation, String(64 * MiB));
    t.true(Number(sr.physical_size) > 0);
    t.true(Number(sr.physical_utilisation) > 0 && Number(sr.physical_utilisation) <= Number(sr.physical_size));
    t.true(fs.readFileSync(ctx.smlog, 'utf8').includes('XenAPI: keeping the toolstack database in step through'));
    t.false(fs.readFileSync(ctx.smlog, 'utf8').includes(SESSION_SECRET), 'the session never reaches SMlog');
  });
});

test('vdi_create honours vdi_uuid', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const chosen = '0b6a4d9e-3f1c-4c2a-9e8d-7a6b5c4d3e2f';
    const reply = (await xml(ctx, 'vdi_create', { args: createArgs(8 * MiB), vdi_uuid: chosen })) as VdiReply;
    t.is(reply.uuid, chosen);
    t.truthy(xapi.vdiByUuid(chosen));
    t.true(fs.existsSync(imagePath(ctx, chosen)));
  });
});

test('vdi_snapshot introduces the snapshot and the unmanaged base copy; the VDI gets vhd-parent', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(16 * MiB) })) as VdiReply;
    const vdiRef = xapi.callsOf('VDI.db_introduce').length && [...xapi.vdis.entries()].find(([, v]) => v.uuid === vdi)![0];
    xapi.vdis.get(vdiRef as string)!.other_config = { 'leaf-coalesce': 'false' };
    const { uuid: snap } = (await xml(ctx, 'vdi_snapshot', { vdi_uuid: vdi, vdi_ref: vdiRef })) as VdiReply;
    const tree = await readTree(ctx);
    const base = tree.get(vdi)!.parent!;
    t.truthy(base);
    t.is(tree.get(snap)!.parent, base);
    const snapRec = xapi.vdiByUuid(snap)!;
    const baseRec = xapi.vdiByUuid(base)!;
    t.truthy(snapRec, 'the snapshot is introduced');
    t.truthy(baseRec, 'the base copy is introduced');
    t.is(baseRec.managed, false, 'the base copy is unmanaged');
    t.is(baseRec.read_only, true);
    t.is(baseRec.location, base);
    t.deepEqual(snapRec.sm_config, { 'vhd-parent': base });
    t.is(snapRec.location, snap);
    t.is(snapRec.managed, true);
    t.deepEqual(xapi.vdis.get(vdiRef as string)!.sm_config, { 'vhd-parent': base }, "the VDI's own record names its new parent");
    t.deepEqual(xapi.vdis.get(vdiRef as string)!.other_config, {}, 'leaf-coalesce cleared');
    t.is(xapi.vdis.size, 3);
  });
});

test('vdi_snapshot of a VDI without leaf-coalesce: no removal call (the record read while paused shows none), the database the same', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(16 * MiB) })) as VdiReply;
    const vdiRef = [...xapi.vdis.entries()].find(([, v]) => v.uuid === vdi)![0];
    xapi.vdis.get(vdiRef)!.other_config = { kept: 'yes' };
    await xml(ctx, 'vdi_snapshot', { vdi_uuid: vdi, vdi_ref: vdiRef });
    t.is(xapi.callsOf('VDI.remove_from_other_config').length, 0, 'removing a key that is not there would change nothing');
    t.deepEqual(xapi.vdis.get(vdiRef)!.other_config, { kept: 'yes' });
    t.is(xapi.vdis.size, 3);
  });
});

test('a single snapshot introduces the snapshot alone, the old image itself, read-only; the VDI names it as its parent', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(16 * MiB) })) as VdiReply;
    const vdiRef = [...xapi.vdis.entries()].find(([, v]) => v.uuid === vdi)![0];
    const { uuid: snap } = (await xml(ctx, 'vdi_snapshot', { vdi_uuid: vdi, vdi_ref: vdiRef, driver_params: { type: 'single' } })) as VdiReply;
    t.is((await readTree(ctx)).get(vdi)!.parent, snap, 'the snapshot is the base itself');
    t.is(xapi.callsOf('VDI.db_introduce').length, 2, 'the VDI at its creation, then the snapshot: no base copy');
    const snapRec = xapi.vdiByUuid(snap)!;
    t.is(snapRec.managed, true);
    t.is(snapRec.read_only, true);
    t.is(snapRec.is_a_snapshot, true);
    t.is(snapRec.snapshot_of, vdiRef);
    t.deepEqual(snapRec.sm_config, {});
    t.deepEqual(xapi.vdis.get(vdiRef)!.sm_config, { 'vhd-parent': snap });
    t.is(xapi.vdis.size, 2);
  });
});

test('vdi_clone introduces the clone and the base copy; the VDI is found by uuid without a vdi_ref', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(16 * MiB) })) as VdiReply;
    const { uuid: clone } = (await xml(ctx, 'vdi_clone', { vdi_uuid: vdi })) as VdiReply;
    const base = (await readTree(ctx)).get(vdi)!.parent!;
    t.is(xapi.vdiByUuid(clone)!.sm_config && (xapi.vdiByUuid(clone)!.sm_config as Record<string, string>)['vhd-parent'], base);
    t.is(xapi.vdiByUuid(base)!.managed, false);
    t.is(xapi.vdiByUuid(vdi)!.sm_config && (xapi.vdiByUuid(vdi)!.sm_config as Record<string, string>)['vhd-parent'], base, 'found by uuid when the call gives no vdi_ref');
    t.is(xapi.vdis.size, 3);
  });
});

test('vdi_resize updates virtual_size; vdi_delete forgets the VDI', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(16 * MiB) })) as VdiReply;
    await xml(ctx, 'vdi_resize', { vdi_uuid: vdi, args: [String(32 * MiB)] });
    t.is(xapi.vdiByUuid(vdi)!.virtual_size, String(32 * MiB));
    t.is(xapi.srs.get(SR_REF)!.virtual_allocation, String(32 * MiB), 'the SR allocation grows by the difference');
    await xml(ctx, 'vdi_delete', { vdi_uuid: vdi });
    t.is(xapi.vdiByUuid(vdi), undefined, 'forgotten');
    t.is(xapi.callsOf('VDI.db_forget').length, 1);
    t.is(xapi.srs.get(SR_REF)!.virtual_allocation, '0');
  });
});

test('vdi_update rewrites what drifted (sizes, vhd-parent) and keeps keys it does not own', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(16 * MiB) })) as VdiReply;
    const rec = xapi.vdiByUuid(vdi)!;
    rec.virtual_size = '1';
    rec.sm_config = { 'vhd-parent': 'stale', [`host_${HOST_REF}`]: 'RW', paused: 'true' };
    await xml(ctx, 'vdi_update', { vdi_uuid: vdi });
    t.is(rec.virtual_size, String(16 * MiB));
    t.deepEqual(rec.sm_config, { [`host_${HOST_REF}`]: 'RW', paused: 'true' });
  });
});

test('a XenAPI Failure on db_introduce fails vdi_create with VDICreate (78) and leaves no VDI on either side', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    xapi.failNext('VDI.db_introduce', ['SR_BACKEND_FAILURE', 'injected']);
    const before = fs.readdirSync(ctx.location).sort();
    const r = await callDriver('vdi_create', request(ctx, 'vdi_create', { args: createArgs(16 * MiB) }), ctx.env);
    t.is(r.code, 0);
    t.is(r.response.kind, 'fault');
    if (r.response.kind !== 'fault') return;
    t.is(r.response.faultCode, 78);
    t.regex(r.response.faultString, /SR_BACKEND_FAILURE injected/);
    t.deepEqual(fs.readdirSync(ctx.location).sort(), before, 'the image it made is removed, nothing left behind');
    t.is(xapi.vdis.size, 0);
    await xml(ctx, 'sr_scan');
    t.is(xapi.vdis.size, 0, 'a scan finds no VDI to introduce either');
  });
});

test('a XenAPI Failure after a snapshot is VDISnapshot (82); the SR stays a valid tree that sr_scan brings into the database', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(16 * MiB) })) as VdiReply;
    xapi.failNext('VDI.db_introduce', ['INTERNAL_ERROR', 'injected']);
    const err = await t.throwsAsync(xml(ctx, 'vdi_snapshot', { vdi_uuid: vdi }), { instanceOf: SmFault });
    t.is(err!.code, 82);
    const tree = await readTree(ctx);
    t.is(tree.size, 3, 'the snapshot was made on disk (leaf, snapshot, base)');
    await xml(ctx, 'sr_scan');
    t.is(xapi.vdis.size, 3, 'the scan introduced the snapshot and the base copy');
    const base = tree.get(vdi)!.parent!;
    t.is(xapi.vdiByUuid(base)!.managed, false);
  });
});

test('an unknown session is SESSION_INVALID: the verb fails (SMGeneral 202 for sr_update) and the session is not echoed', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    xapi.sessions.delete(SESSION_SECRET);
    const r = await callDriver('sr_update', request(ctx, 'sr_update'), ctx.env);
    t.is(r.response.kind, 'fault');
    if (r.response.kind !== 'fault') return;
    t.is(r.response.faultCode, 202);
    t.regex(r.response.faultString, /SESSION_INVALID/);
    t.false(r.response.faultString.includes(SESSION_SECRET));
  });
});

test('vdi_introduce of an image made behind the SM, under new_uuid: the driver introduces the VDI (xapi looks it up by uuid)', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const image = '5d1e7c2a-8b3f-4e6d-9a1c-2f3e4d5c6b7a';
    const wanted = '6e2f8d3b-9c4a-4f7e-8b2d-3a4f5e6d7c8b';
    const made = await smVhd(['create', '-n', imagePath(ctx, image), '-s', '8']);
    t.is(made.code, 0, made.stderr);
    const reply = (await xml(ctx, 'vdi_introduce', { vdi_location: image, new_uuid: wanted })) as VdiReply;
    t.deepEqual(reply, { uuid: wanted, location: wanted });
    const rec = xapi.vdiByUuid(wanted);
    t.truthy(rec, 'the stand-in has the VDI by its new uuid');
    t.is(rec!.location, wanted);
    t.is(rec!.virtual_size, String(8 * MiB));
    t.is(xapi.callsOf('VDI.db_introduce').length, 1);
    // Introduced again (the toolstack forgot nothing): the same reply, no second record.
    t.deepEqual(await xml(ctx, 'vdi_introduce', { vdi_location: wanted, new_uuid: wanted }), reply);
    t.is(xapi.callsOf('VDI.db_introduce').length, 1);
  });
});

test('vdi_list_changed_blocks takes its target as xapi passes it, a reference, resolved through XenAPI', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(8 * MiB) })) as VdiReply;
    t.is(await xml(ctx, 'vdi_enable_cbt', { vdi_uuid: vdi, vdi_location: vdi }), null);
    const { uuid: s1 } = (await xml(ctx, 'vdi_snapshot', { vdi_uuid: vdi, vdi_location: vdi })) as VdiReply;
    const { uuid: s2 } = (await xml(ctx, 'vdi_snapshot', { vdi_uuid: vdi, vdi_location: vdi })) as VdiReply;
    const s2Ref = [...xapi.vdis.entries()].find(([, v]) => v.uuid === s2)![0];
    const byRef = await xml(ctx, 'vdi_list_changed_blocks', { vdi_uuid: s1, vdi_location: s1, args: [s2Ref] });
    const byUuid = await xml(ctx, 'vdi_list_changed_blocks', { vdi_uuid: s1, vdi_location: s1, args: [s2] });
    t.is(typeof byRef, 'string');
    t.is(byRef, byUuid, 'the same blocks whichever way the target is named');
    const gone = await t.throwsAsync(xml(ctx, 'vdi_list_changed_blocks', { vdi_uuid: s1, vdi_location: s1, args: ['OpaqueRef:no-such-vdi'] }), { instanceOf: SmFault });
    t.not(gone.code, 0, 'a reference xapi does not know is a fault');
  });
});
