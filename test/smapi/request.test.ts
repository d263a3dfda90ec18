import test from 'ava';
import { SMError, maskSecrets, parseRequest } from '../../lib/smapi/index.js';
import { REQUEST_BASE, useTempSmRoot } from './helpers.js';

useTempSmRoot();

test('a complete request keeps every known field with its type', (t) => {
  const req = parseRequest('vdi_attach', [
    {
      ...REQUEST_BASE,
      command: 'vdi_attach',
      args: ['true'],
      sr_uuid: 'sr-1',
      vdi_uuid: 'vdi-1',
      vdi_location: 'vdi-1',
      sr_sm_config: {},
      vdi_sm_config: { vhd_parent: 'p' },
      driver_params: { type: 'single' },
      vdi_on_boot: 'persist',
      vdi_allow_caching: 'false',
      local_cache_sr: 'lc',
      unknown_future_field: 'ignored',
    },
  ]);
  t.is(req.command, 'vdi_attach');
  t.deepEqual(req.args, ['true']);
  t.is(req.session_ref, 'OpaqueRef:session-secret');
  t.deepEqual(req.vdi_sm_config, { vhd_parent: 'p' });
  t.deepEqual(req.driver_params, { type: 'single' });
  t.is(req.vdi_on_boot, 'persist');
  t.false('unknown_future_field' in req);
});

test('command defaults to the method name; nil optional fields are absent', (t) => {
  const req = parseRequest('sr_scan', [{ ...REQUEST_BASE, sr_uuid: null }]);
  t.is(req.command, 'sr_scan');
  t.false('sr_uuid' in req);
});

const badRequests: [string, unknown[], RegExp][] = [
  ['no params', [], /one struct parameter/],
  ['two params', [{}, {}], /one struct parameter/],
  ['params not a struct', ['x'], /one struct parameter/],
  ['command mismatch', [{ ...REQUEST_BASE, command: 'sr_delete' }], /does not match/],
  ['host_ref missing', [{ args: [], device_config: {} }], /host_ref is missing/],
  ['host_ref not a string', [{ ...REQUEST_BASE, host_ref: 5 }], /host_ref must be a string/],
  ['args missing', [{ host_ref: 'h', device_config: {} }], /args is missing/],
  ['args not strings', [{ ...REQUEST_BASE, args: [10737418240] }], /args must be an array of strings/],
  ['args not an array', [{ ...REQUEST_BASE, args: 'x' }], /args must be an array of strings/],
  ['device_config missing', [{ host_ref: 'h', args: [] }], /device_config is missing/],
  ['device_config value not a string', [{ ...REQUEST_BASE, device_config: { port: 3260 } }], /device_config.port must be a string/],
  ['device_config an array', [{ ...REQUEST_BASE, device_config: ['a'] }], /device_config must be a struct/],
  ['optional field wrong type', [{ ...REQUEST_BASE, sr_uuid: 7 }], /sr_uuid must be a string/],
  ['sm_config wrong type', [{ ...REQUEST_BASE, vdi_sm_config: 'x' }], /vdi_sm_config must be a struct/],
];

for (const [title, params, opterr] of badRequests) {
  test(`BadRequest (143): ${title}`, (t) => {
    const err = t.throws(() => parseRequest('sr_scan', params), { instanceOf: SMError });
    t.is(err?.name, 'BadRequest');
    t.is(err?.code, 143);
    t.regex(err?.opterr ?? '', opterr);
  });
}

test('maskSecrets hides password keys and the session, recursively, without touching the input', (t) => {
  const params = {
    ...REQUEST_BASE,
    device_config: { target: '10.0.0.1', chapuser: 'u', chappassword: 'p1', incoming_chappassword: 'p2', Password: 'p3' },
    nested: [{ smb_password: 'p4', keep: 'visible' }],
  };
  const masked = maskSecrets(params);
  t.is(masked.session_ref, '******');
  t.deepEqual(masked.device_config, {
    target: '10.0.0.1',
    chapuser: 'u',
    chappassword: '******',
    incoming_chappassword: '******',
    Password: '******',
  });
  t.deepEqual(masked.nested, [{ smb_password: '******', keep: 'visible' }]);
  t.is(params.device_config.chappassword, 'p1');
  t.is(params.session_ref, 'OpaqueRef:session-secret');
  t.false(JSON.stringify(masked).includes('p1'));
});
