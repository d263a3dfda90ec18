// vdi_activate and vdi_deactivate keep the toolstack's `host_<ref>` tag of an
// active VDI in the stand-in xapi's database, and an activation waits while the
// VDI is `paused` (reference §5).
import test from 'ava';
import { callDriver, createArgs, request, xml } from '../helpers/sm.js';
import { HOST_REF, MiB, withXapiSr } from './standin-world.js';

interface VdiReply {
  uuid: string;
}

test('activate tags host_<ref> RW, lets activating go; deactivate untags', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(8 * MiB) })) as VdiReply;
    const rec = xapi.vdiByUuid(vdi)!;
    await xml(ctx, 'vdi_attach', { vdi_uuid: vdi, args: ['true'] });
    await xml(ctx, 'vdi_activate', { vdi_uuid: vdi, args: ['true'] });
    t.deepEqual(rec.sm_config, { [`host_${HOST_REF}`]: 'RW' });
    t.true(xapi.callsOf('VDI.add_to_sm_config').some((c) => c.params[1] === 'activating'), 'activating was taken');
    await xml(ctx, 'vdi_deactivate', { vdi_uuid: vdi });
    await xml(ctx, 'vdi_detach', { vdi_uuid: vdi });
    t.deepEqual(rec.sm_config, {});
  });
});

test('a paused VDI is not activated: the activation waits, then fails VDIUnavailable (46) and leaves no tag', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(8 * MiB) })) as VdiReply;
    const rec = xapi.vdiByUuid(vdi)!;
    rec.sm_config = { paused: 'true' };
    await xml(ctx, 'vdi_attach', { vdi_uuid: vdi, args: ['false'] });
    const r = await callDriver('vdi_activate', request(ctx, 'vdi_activate', { vdi_uuid: vdi, args: ['false'] }), { ...ctx.env, SM_XAPI_TAG_ATTEMPTS: '2' });
    t.is(r.response.kind, 'fault');
    if (r.response.kind === 'fault') t.is(r.response.faultCode, 46);
    t.deepEqual(rec.sm_config, { paused: 'true' }, 'neither activating nor a host tag is left');
    // Unpaused, the same call goes through, read-only.
    rec.sm_config = {};
    await xml(ctx, 'vdi_activate', { vdi_uuid: vdi, args: ['false'] });
    t.deepEqual(rec.sm_config, { [`host_${HOST_REF}`]: 'RO' });
    await xml(ctx, 'vdi_deactivate', { vdi_uuid: vdi });
    await xml(ctx, 'vdi_detach', { vdi_uuid: vdi });
  });
});
