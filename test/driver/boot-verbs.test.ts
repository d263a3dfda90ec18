// The verbs a toolstack sends around a VM's boot and for the HA statefile,
// through the real FileSR executable as xapi runs it (argv XML-RPC):
// vdi_epoch_begin/end (reset on boot), vdi_generate_config with
// vdi_attach_from_config/vdi_detach_from_config (no session, SR not attached),
// vdi_introduce with new_uuid, sr_content_type.
import fs from 'node:fs';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import test from 'ava';
import { createDynamic, createDifferencing } from '../../lib/vhd/index.js';
import { parseMethodCall } from '../../lib/smapi/xmlrpc-codec.js';
import { MiB, pattern, SparseDisk } from '../helpers/model.js';
import { callDriverRaw, gc, makeSmEnv, readSmlog, run, SmFault, xml } from '../helpers/sm.js';
import { isServed, openNbd, qemuIo } from '../helpers/nbd-vdi.js';
import { checkProblems, diffVdi, imagePath, readMetadata, readTree } from '../helpers/sr-state.js';
import { withWorld } from '../helpers/world.js';

const vdiArgs = (vdi: string, extra: Record<string, unknown> = {}) => ({ vdi_uuid: vdi, vdi_location: vdi, ...extra });

test('sr_content_type answers "vhd"; vdi_epoch_end and a "persist" epoch_begin change nothing', async (t) => {
  await withWorld(async (w, ctx) => {
    t.is(await xml(ctx, 'sr_content_type'), 'vhd');
    const V = await w.create('V', 4 * MiB);
    await w.write('V', 0, pattern(1, MiB));
    const before = fs.readFileSync(imagePath(ctx, V));
    t.is(await xml(ctx, 'vdi_epoch_begin', vdiArgs(V, { vdi_on_boot: 'persist' })), null);
    t.is(await xml(ctx, 'vdi_epoch_end', vdiArgs(V)), null);
    t.true(fs.readFileSync(imagePath(ctx, V)).equals(before), 'the image is byte for byte the same');
    await w.check(t);
  });
});

test('reset on boot: the leaf loses what was written since the last snapshot; the file shrinks; the chain checks clean', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 8 * MiB);
    await w.write('V', 0, pattern(1, 3 * MiB));
    const atSnapshot = w.models.get(V)!.copy();
    await w.snapshot('V', 'S');
    await w.write('V', MiB, pattern(2, 4 * MiB));
    const grown = fs.statSync(imagePath(ctx, V)).size;
    t.is(await xml(ctx, 'vdi_epoch_begin', vdiArgs(V, { vdi_on_boot: 'reset' })), null);
    w.models.set(V, atSnapshot.copy());
    t.is(await diffVdi(ctx, V, atSnapshot), undefined, 'V reads as at the snapshot');
    t.true(fs.statSync(imagePath(ctx, V)).size < grown / 2, 'the dropped blocks no longer take space');
    t.deepEqual(await checkProblems(ctx), []);
    // qemu reads VHD (no differencing chains, no check): it must still open the emptied leaf and see its size.
    const qemu = await run('qemu-img', ['info', '--output=json', '-f', 'vpc', imagePath(ctx, V)]);
    t.is(qemu.code, 0, qemu.stderr);
    t.is(JSON.parse(qemu.stdout)['virtual-size'], 8 * MiB);
    // Written again after the reset, then reset again: idempotent, the same result.
    await w.write('V', 0, pattern(3, MiB));
    await xml(ctx, 'vdi_epoch_begin', vdiArgs(V, { vdi_on_boot: 'reset' }));
    w.models.set(V, atSnapshot.copy());
    t.is(await diffVdi(ctx, V, atSnapshot), undefined);
    await w.check(t);
  });
});

test('a VDI that resets on boot keeps its reset point: the GC does not merge its leaf when its snapshot is deleted', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 8 * MiB);
    await w.write('V', 0, pattern(5, 2 * MiB));
    const atSnapshot = w.models.get(V)!.copy();
    await w.snapshot('V', 'S');
    // The toolstack sends vdi_on_boot with the VDI's verbs; a VM start sends epoch_begin.
    await xml(ctx, 'vdi_epoch_begin', vdiArgs(V, { vdi_on_boot: 'reset' }));
    await w.write('V', MiB, pattern(6, MiB));
    await w.delete('S');
    await gc(ctx);
    t.truthy((await readTree(ctx)).get(V)!.parent, 'V still has its parent, the reset point');
    t.regex(readSmlog(ctx), /skipped: the VDI resets on boot/);
    await xml(ctx, 'vdi_epoch_begin', vdiArgs(V, { vdi_on_boot: 'reset' }));
    w.models.set(V, atSnapshot.copy());
    t.is(await diffVdi(ctx, V, atSnapshot), undefined, 'the next boot resets to the snapshot state');
    // Set back to persist: the GC merges the leaf as for any VDI.
    await xml(ctx, 'vdi_epoch_begin', vdiArgs(V, { vdi_on_boot: 'persist' }));
    await gc(ctx);
    t.falsy((await readTree(ctx)).get(V)!.parent, 'a persistent VDI is leaf-coalesced');
    await w.check(t);
  });
});

test('reset on boot of a VDI without a parent is refused (202) and changes nothing', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 4 * MiB);
    await w.write('V', 0, pattern(4, MiB));
    const before = fs.readFileSync(imagePath(ctx, V));
    const err = await t.throwsAsync(xml(ctx, 'vdi_epoch_begin', vdiArgs(V, { vdi_on_boot: 'reset' })), { instanceOf: SmFault });
    t.is(err.code, 202);
    t.regex(err.faultString, /has no parent/);
    t.true(fs.readFileSync(imagePath(ctx, V)).equals(before));
  });
});

test('reset on boot of a served VDI: its datapath is paused, the leaf emptied, and a new connection reads the snapshot state', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 8 * MiB);
    await w.write('V', 0, pattern(5, 2 * MiB));
    const atSnapshot = w.models.get(V)!.copy();
    await w.snapshot('V', 'S');
    await w.s.call('vdi_attach', vdiArgs(V, { args: ['true'] }));
    await w.s.call('vdi_activate', vdiArgs(V, { args: ['true'] }));
    const c = await openNbd(ctx, V);
    await c.write(0, pattern(6, MiB));
    await c.flush();
    c.close();
    await xml(ctx, 'vdi_epoch_begin', vdiArgs(V, { vdi_on_boot: 'reset' }));
    t.true(isServed(ctx, V), 'still served');
    const again = await openNbd(ctx, V);
    t.true((await again.read(0, 2 * MiB)).equals(atSnapshot.read(0, 2 * MiB)), 'a new connection reads the state at the snapshot');
    again.close();
    await w.s.call('vdi_deactivate', vdiArgs(V));
    await w.s.call('vdi_detach', vdiArgs(V));
    w.models.set(V, atSnapshot);
    await w.check(t);
  });
});

test('generate_config, then attach_from_config with no session on a detached SR serves the VDI; detach_from_config releases it', async (t) => {
  const ctx = await makeSmEnv();
  try {
    await xml(ctx, 'sr_create', { args: ['0'] });
    await xml(ctx, 'sr_attach');
    const { uuid: V } = (await xml(ctx, 'vdi_create', { args: ['4194304', 'statefile', '', '', 'false', '', '', 'false'] })) as { uuid: string };
    const config = (await xml(ctx, 'vdi_generate_config', vdiArgs(V))) as string;
    t.is(typeof config, 'string');
    const call = parseMethodCall(config);
    t.is(call.methodName, 'vdi_attach_from_config');
    const params = call.params[0] as Record<string, unknown>;
    t.is(params.vdi_uuid, V);
    t.is(params.sr_uuid, ctx.sr);
    t.is(params.session_ref, undefined, 'the config carries no session');
    await xml(ctx, 'sr_detach');

    // As a host at boot: the config alone, argv, no toolstack.
    const attached = await callDriverRaw(config, ctx.env);
    t.is(attached.code, 0, attached.stderr);
    if (attached.response.kind === 'fault') return t.fail(attached.response.faultString);
    const reply = attached.response.value as Record<string, string>;
    t.is(reply.params_nbd, `nbd:unix:${path.join(ctx.root, 'run', 'blktap-control', 'nbd', ctx.sr, V)}:exportname=${V}`);
    t.truthy(reply.params);
    t.true(isServed(ctx, V), 'served after attach_from_config');
    const io = await qemuIo(ctx, V, ['write -P 0x5a 0 64k', 'read -P 0x5a 0 64k']);
    t.is(io.code, 0, io.stderr);

    // static-vdis detaches with the same struct under the other command.
    const detachXml = config.replaceAll('vdi_attach_from_config', 'vdi_detach_from_config');
    const detached = await callDriverRaw(detachXml, ctx.env);
    t.is(detached.response.kind, 'result', JSON.stringify(detached.response));
    t.false(isServed(ctx, V), 'no longer served');
    const model = new SparseDisk(4 * MiB);
    model.write(0, Buffer.alloc(64 * 1024, 0x5a));
    t.is(await diffVdi(ctx, V, model), undefined, 'what the boot-time client wrote is in the VDI');
    t.deepEqual(await checkProblems(ctx), []);
  } finally {
    await ctx.cleanup();
  }
});

test('vdi_introduce with new_uuid makes an image of the SR a VDI under that uuid; a parent image keeps its name', async (t) => {
  await withWorld(async (w, ctx) => {
    // Images put in the SR's directory by hand: a standalone one and a parent with its child.
    const lone = randomUUID();
    await createDynamic(imagePath(ctx, lone), 4 * MiB);
    const parent = randomUUID();
    const child = randomUUID();
    await createDynamic(imagePath(ctx, parent), 4 * MiB);
    await createDifferencing(imagePath(ctx, child), imagePath(ctx, parent));
    const wanted = randomUUID();

    const reply = await xml(ctx, 'vdi_introduce', { new_uuid: wanted, vdi_location: lone, vdi_sm_config: {} });
    t.deepEqual(reply, { uuid: wanted, location: wanted });
    t.false(fs.existsSync(imagePath(ctx, lone)));
    t.true(fs.existsSync(imagePath(ctx, wanted)));
    t.truthy(readMetadata(ctx).vdis[wanted], 'recorded as a VDI');
    // The toolstack introducing the same VDI again (after a vdi-forget) is answered the same.
    t.deepEqual(await xml(ctx, 'vdi_introduce', { new_uuid: wanted, vdi_location: wanted }), { uuid: wanted, location: wanted });
    // It is a VDI like any other: attach, activate, write through the datapath.
    await w.s.call('vdi_attach', vdiArgs(wanted, { args: ['true'] }));
    await w.s.call('vdi_activate', vdiArgs(wanted, { args: ['true'] }));
    const io = await qemuIo(ctx, wanted, ['write -P 0x11 0 4k']);
    t.is(io.code, 0, io.stderr);
    await w.s.call('vdi_deactivate', vdiArgs(wanted));
    await w.s.call('vdi_detach', vdiArgs(wanted));

    const before = await readTree(ctx);
    const err = await t.throwsAsync(xml(ctx, 'vdi_introduce', { new_uuid: randomUUID(), vdi_location: parent }), { instanceOf: SmFault });
    t.is(err.code, 46);
    t.deepEqual(await readTree(ctx), before, 'nothing renamed');
    const missing = await t.throwsAsync(xml(ctx, 'vdi_introduce', { new_uuid: randomUUID(), vdi_location: randomUUID() }), { instanceOf: SmFault });
    t.is(missing.code, 144);
    t.deepEqual(await checkProblems(ctx), []);
  });
});
