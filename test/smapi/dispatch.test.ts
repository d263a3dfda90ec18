import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import {
  SMError,
  SM_ERRORS,
  capabilitiesOf,
  dispatch,
  encodeMethodCall,
  parseMethodResponse,
  runXmlRpc,
  toSMError,
  type Driver,
} from '../../lib/smapi/index.js';
import { testDriver } from './fixtures/test-driver.js';
import { REQUEST_BASE, useTempSmRoot } from './helpers.js';

const root = useTempSmRoot();
const smlog = () => fs.readFileSync(path.join(root, 'var/log/SMlog'), 'utf8');

test('the error table has the protocol codes, and faultString adds opterr', (t) => {
  // Copied from shared/reference/smapi-v1.md.
  const reference = `SRInUse 16, VDIInUse 24, LockErr 37, Unimplemented 38, SRNotEmpty 39, SRScan 40,
    SRExists 42, VDIExists 43, SRNoSpace 44, VDIUnavailable 46, SRUnavailable 47,
    SRUnknownType 48, LVMCreate 50, LVMMaster 58, FileSRCreate 61, VDILoad 65,
    VDIType 66, ISCSILogin 68, NFSVersion 72, NFSMount 73, NFSUnMount 74, NFSAttached 75,
    VDICreate 78, VDISize 79, VDIDelete 80, VDIClone 81, VDISnapshot 82, NFSCreate 88,
    ConfigLocationMissing 94, ConfigTargetMissing 95, ConfigTargetIQNMissing 96,
    ConfigServerPathMissing 101, ConfigServerMissing 102, ConfigSCSIid 107, NFSTarget 108,
    SnapshotChainTooLong 109, VDIResize 110, ConfigParamsMissing 115, BadRequest 143,
    VDIMissing 144, MetadataError 181, EIO 200, SMGeneral 202, LeafGCSkip 204,
    GenericException 1200`;
  const expected = Object.fromEntries(
    reference.split(',').map((pair) => {
      const [name, code] = pair.trim().split(/\s+/);
      return [name, Number(code)];
    }),
  );
  const actual = Object.fromEntries(Object.entries(SM_ERRORS).map(([name, e]) => [name, e.code]));
  t.deepEqual(actual, expected);
  for (const e of Object.values(SM_ERRORS)) t.true(e.description.length > 0);
  const err = new SMError('VDIInUse', 'attached');
  t.is(err.faultString, `${SM_ERRORS.VDIInUse.description} [opterr=attached]`);
  t.is(new SMError('VDIInUse').faultString, SM_ERRORS.VDIInUse.description);
  const codes = Object.values(SM_ERRORS).map((e) => e.code);
  t.is(new Set(codes).size, codes.length);
});

test('toSMError keeps SMErrors and turns anything else into 1200 with its message', (t) => {
  const sm = new SMError('LockErr');
  t.is(toSMError(sm), sm);
  const wrapped = toSMError(new Error('disk on fire'));
  t.is(wrapped.code, 1200);
  t.is(wrapped.opterr, 'disk on fire');
  t.is(toSMError('plain string').opterr, 'plain string');
});

const xmlCall = async (method: string, params: unknown[]) => parseMethodResponse(await runXmlRpc(testDriver, encodeMethodCall(method, params)));

test('unknown and unimplemented verbs are Unimplemented (38) naming the verb', async (t) => {
  const unknown = await t.throwsAsync(dispatch(testDriver, 'vdi_frobnicate', [REQUEST_BASE]), { instanceOf: SMError });
  t.is(unknown?.code, 38);
  t.is(unknown?.opterr, 'unknown verb vdi_frobnicate');
  const unimplemented = await t.throwsAsync(dispatch(testDriver, 'vdi_compose', [REQUEST_BASE]), { instanceOf: SMError });
  t.is(unimplemented?.code, 38);
  t.is(unimplemented?.opterr, 'vdi_compose');
  t.deepEqual(await xmlCall('vdi_frobnicate', [REQUEST_BASE]), {
    kind: 'fault',
    faultCode: 38,
    faultString: `${SM_ERRORS.Unimplemented.description} [opterr=unknown verb vdi_frobnicate]`,
  });
});

test('sr_get_driver_info comes from driver.info and lists only implemented capabilities', async (t) => {
  const reply = await xmlCall('sr_get_driver_info', [{ host_ref: 'h', args: [], device_config: {} }]);
  t.deepEqual(reply, {
    kind: 'result',
    value: {
      name: 'Test',
      description: 'Protocol test driver',
      vendor: 'Tests',
      copyright: '(C) nobody',
      driver_version: '0.1',
      required_api_version: '1.0',
      capabilities: [
        'SR_ATTACH',
        'SR_SCAN',
        'SR_PROBE',
        'VDI_CREATE',
        'VDI_DELETE',
        'VDI_ATTACH',
        'VDI_SNAPSHOT',
        'VDI_CLONE',
        'VDI_RESIZE',
        'VDI_UPDATE',
        'VDI_INTRODUCE',
        // vdi_generate_config alone: no VDI_GENERATE_CONFIG without attach/detach_from_config.
        'THIN_PROVISIONING',
        'LARGE_VDI',
      ],
      configuration: [{ key: 'location', description: 'a directory' }],
    },
  });
  // No params needed at all: the toolstack asks this before anything else.
  t.is((await dispatch(testDriver, 'sr_get_driver_info', []) as { name: string }).name, 'Test');
});

test('a verb capability cannot be declared without implementing the verb', (t) => {
  const driver = {
    info: { ...testDriver.info, capabilities: ['VDI_CREATE', 'SR_TRIM'] },
    verbs: {},
  } as unknown as Driver;
  t.deepEqual(capabilitiesOf(driver), ['SR_TRIM']);
});

test('VDI_GENERATE_CONFIG is advertised only with attach_from_config and detach_from_config implemented too', (t) => {
  const verb = async () => null;
  const info = { ...testDriver.info, capabilities: [] };
  const only = { info, verbs: { vdi_generate_config: verb } } as unknown as Driver;
  t.deepEqual(capabilitiesOf(only), []);
  const half = { info, verbs: { vdi_generate_config: verb, vdi_attach_from_config: verb } } as unknown as Driver;
  t.deepEqual(capabilitiesOf(half), []);
  const all = { info, verbs: { vdi_generate_config: verb, vdi_attach_from_config: verb, vdi_detach_from_config: verb } } as unknown as Driver;
  t.deepEqual(capabilitiesOf(all), ['VDI_GENERATE_CONFIG']);
});

test('replies: struct results, nil verbs forced to nil, strings escaped', async (t) => {
  const created = await xmlCall('vdi_create', [{ ...REQUEST_BASE, vdi_uuid: 'v1', args: ['1024', 'label'] }]);
  t.deepEqual(created, { kind: 'result', value: { uuid: 'v1', location: 'label' } });
  // sr_scan returns records, but SMAPIv1 answers nil.
  t.deepEqual(await xmlCall('sr_scan', [REQUEST_BASE]), { kind: 'result', value: null });
  t.deepEqual(await xmlCall('sr_attach', [REQUEST_BASE]), { kind: 'result', value: null });
  const config = await runXmlRpc(testDriver, encodeMethodCall('vdi_generate_config', [{ ...REQUEST_BASE, vdi_uuid: 'v' }]));
  t.true(config.includes('<string>config for v &amp; &lt;friends&gt;</string>'));
  const attach = await xmlCall('vdi_attach', [{ ...REQUEST_BASE, sr_uuid: 's', vdi_uuid: 'v' }]);
  t.like(attach, { kind: 'result', value: { params: '/run/sr-mount/s/v.vhd', o_direct: true } });
});

test('verb errors become faults: SMError keeps its code, others are 1200', async (t) => {
  t.deepEqual(await xmlCall('vdi_delete', [REQUEST_BASE]), {
    kind: 'fault',
    faultCode: 24,
    faultString: `${SM_ERRORS.VDIInUse.description} [opterr=attached to vm-1]`,
  });
  t.deepEqual(await xmlCall('vdi_resize', [REQUEST_BASE]), {
    kind: 'fault',
    faultCode: 1200,
    faultString: `${SM_ERRORS.GenericException.description} [opterr=disk exploded]`,
  });
  t.like(await xmlCall('vdi_create', [{ ...REQUEST_BASE, args: 'nope' }]), { kind: 'fault', faultCode: 143 });
});

test('each verb is logged with its params, secrets masked', async (t) => {
  await xmlCall('vdi_update', [{ ...REQUEST_BASE, device_config: { SRmaster: 'true', chappassword: 'hunter2' } }]);
  const log = smlog();
  t.regex(log, / SM: \[\d+\] vdi_update \{.*"chappassword":"\*\*\*\*\*\*"/);
  t.false(log.includes('hunter2'));
  t.false(log.includes('OpaqueRef:session-secret'));
});
