// The master's side of pause (reference §5): a snapshot, clone or resize sets
// `paused` in the database and asks every other host with a `host_<ref>` tag
// to pause through the `tapdisk-pause` plugin, then to unpause; the stand-in
// xapi records the plugin calls (the host side is the plugin's, not tested here).
import test from 'ava';
import { callDriver, createArgs, request, xml } from '../helpers/sm.js';
import { readTree } from '../helpers/sr-state.js';
import { MiB, OTHER_HOST_REF, withXapiSr } from './standin-world.js';

interface VdiReply {
  uuid: string;
}

test('vdi_snapshot pauses the VDI on the other host serving it, and unpauses it after', async (t) => {
  const seen: string[] = [];
  await withXapiSr(
    async (ctx, xapi) => {
      const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(8 * MiB) })) as VdiReply;
      const rec = xapi.vdiByUuid(vdi)!;
      rec.sm_config = { [`host_${OTHER_HOST_REF}`]: 'RW' };
      xapi.calls.length = 0;
      const { uuid: snap } = (await xml(ctx, 'vdi_snapshot', { vdi_uuid: vdi })) as VdiReply;
      const base = (await readTree(ctx)).get(vdi)!.parent!;
      t.deepEqual(seen, [`pause ${OTHER_HOST_REF} paused=true`, `unpause ${OTHER_HOST_REF} paused=true`]);
      const plugin = xapi.callsOf('host.call_plugin');
      t.deepEqual(plugin[0].params.slice(1), ['tapdisk-pause', 'pause', { sr_uuid: ctx.sr, vdi_uuid: vdi, failfast: 'False' }]);
      const methods = xapi.calls.map((c) => `${c.method}${c.method.includes('sm_config') ? ` ${String(c.params[1])}` : ''}`);
      const at = (m: string) => methods.indexOf(m);
      t.true(at('VDI.add_to_sm_config paused') < at('host.call_plugin'), 'paused is set before the hosts are asked');
      t.true(at('VDI.db_introduce') > at('host.call_plugin') && at('VDI.db_introduce') < methods.lastIndexOf('host.call_plugin'), 'the database hears of the snapshot while paused');
      t.is(methods.at(-1), 'VDI.remove_from_sm_config paused', 'paused goes last');
      t.deepEqual(rec.sm_config, { [`host_${OTHER_HOST_REF}`]: 'RW', 'vhd-parent': base });
      t.truthy(xapi.vdiByUuid(snap));
    },
    {
      plugin: (host, _plugin, fn, args, standin) => {
        const sm = standin.vdiByUuid(args.vdi_uuid)!.sm_config as Record<string, string>;
        seen.push(`${fn} ${host} paused=${sm.paused ?? 'absent'}`);
        return 'True';
      },
    },
  );
});

test('a host that cannot pause fails the snapshot (VDISnapshot 82) before anything changes; paused goes again', async (t) => {
  await withXapiSr(
    async (ctx, xapi) => {
      const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(8 * MiB) })) as VdiReply;
      const rec = xapi.vdiByUuid(vdi)!;
      rec.sm_config = { [`host_${OTHER_HOST_REF}`]: 'RW' };
      const r = await callDriver('vdi_snapshot', request(ctx, 'vdi_snapshot', { vdi_uuid: vdi }), ctx.env);
      t.is(r.response.kind, 'fault');
      if (r.response.kind === 'fault') {
        t.is(r.response.faultCode, 82);
        t.regex(r.response.faultString, /failed to pause VDI/);
      }
      t.is((await readTree(ctx)).size, 1, 'no snapshot was made');
      t.deepEqual(rec.sm_config, { [`host_${OTHER_HOST_REF}`]: 'RW' }, 'paused removed again');
      t.deepEqual(
        xapi.callsOf('host.call_plugin').map((c) => c.params[2]),
        ['pause'],
        'nothing was paused, so nothing is unpaused',
      );
    },
    { plugin: () => 'False' },
  );
});
