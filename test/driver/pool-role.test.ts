// The host's role from device_config.SRmaster, and the refusal a slave gets
// through the real driver: which verbs it may run and which fault 58 first,
// before any validation or lock, and change nothing.
import test from 'ava';
import { SMError } from '../../lib/errors/sm-error.js';
import type { Request } from '../../lib/smapi/index.js';
import { requireMaster, roleOf } from '../../lib/sr/pool-role.js';
import { createArgs, makeSmEnv, poolHost, withServer } from '../helpers/sm.js';
import { activations, snapshotDir } from '../helpers/sr-state.js';

const withFlag = (flag?: string) => ({ device_config: flag === undefined ? {} : { SRmaster: flag } }) as unknown as Request;

test('SRmaster "true" or absent is the master; anything else a slave', (t) => {
  t.is(roleOf(withFlag('true')), 'master');
  t.is(roleOf(withFlag()), 'master', 'a host on its own (no pool) is its SR master');
  t.is(roleOf(withFlag('false')), 'slave');
  t.is(roleOf(withFlag('')), 'slave');
  t.notThrows(() => requireMaster(withFlag('true'), 'vdi_create'));
  const err = t.throws(() => requireMaster(withFlag('false'), 'vdi_create'), { instanceOf: SMError });
  t.is(err?.code, 58);
  t.regex(err!.message, /must run on the pool master.*vdi_create/);
});

test('through the driver: a slave may attach, activate and generate config; every SR-changing verb faults 58 before validation', async (t) => {
  const master = await makeSmEnv();
  const slave = poolHost(master, 'slave', false);
  try {
    const vdi = await withServer(master, async (m) => {
      await m.call('sr_create', { args: ['0'] });
      await m.call('sr_attach');
      return ((await m.call('vdi_create', { args: createArgs(4 * 1024 * 1024), vdi_type: 'user' })) as { uuid: string }).uuid;
    });
    // The activation folder is the one place a slave writes (its own records, gone again on deactivate).
    const srTree = () => snapshotDir(master.location, (rel) => rel === '.sm/active');
    const before = srTree();
    await withServer(slave, async (s) => {
      const v = { vdi_uuid: vdi, vdi_location: vdi };
      await s.call('sr_attach');
      t.truthy(await s.call('sr_get_driver_info'));
      await s.call('vdi_attach', { ...v, args: ['false'] });
      await s.call('vdi_activate', { ...v, args: ['false'] });
      t.regex(String(await s.call('vdi_generate_config', v)), /vdi_attach_from_config/);
      await s.call('vdi_deactivate', v);
      await s.call('vdi_detach', v);
      // Refused before the request is looked at: a bad size or a missing VDI still gets 58.
      t.is((await s.fault('vdi_create', { args: createArgs('not-a-size'), vdi_type: 'user' })).code, 58);
      t.is((await s.fault('vdi_delete', { vdi_uuid: '00000000-0000-4000-8000-000000000000' })).code, 58);
      t.is((await s.fault('vdi_resize', { ...v, args: ['1'] })).code, 58, 'a shrink a master would refuse with its own code');
      await s.call('sr_detach');
    });
    t.deepEqual(srTree(), before, "the slave's calls left the SR as it was");
    t.is(activations(master).size, 0, 'no activation record left');
    // Without SRmaster at all the same host acts as master.
    await withServer({ ...slave, srMaster: true }, async (s) => {
      await s.call('sr_attach', { device_config: { SRmaster: undefined } });
      t.truthy(await s.call('vdi_snapshot', { vdi_uuid: vdi, vdi_location: vdi, device_config: { SRmaster: undefined } }));
    });
  } finally {
    await master.cleanup();
  }
});
