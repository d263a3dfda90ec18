import test from 'ava';
import { SM_ERRORS, runJsonRpc } from '../../lib/smapi/index.js';
import { testDriver } from './fixtures/test-driver.js';
import { REQUEST_BASE, useTempSmRoot } from './helpers.js';

useTempSmRoot();

const rpc = async (payload: unknown) => {
  const text = await runJsonRpc(testDriver, typeof payload === 'string' ? payload : JSON.stringify(payload));
  return text === '' ? undefined : JSON.parse(text);
};
const request = (id: number | string, method: string, params: unknown = REQUEST_BASE) => ({ jsonrpc: '2.0', id, method, params });

test('a single call returns the same value as XML-RPC would', async (t) => {
  t.deepEqual(await rpc(request(1, 'vdi_create', { ...REQUEST_BASE, vdi_uuid: 'v1', args: ['1024', 'lbl'] })), {
    jsonrpc: '2.0',
    id: 1,
    result: { uuid: 'v1', location: 'lbl' },
  });
});

test('nil becomes null; sr_scan returns the VDI records', async (t) => {
  t.deepEqual(await rpc(request('a', 'sr_attach')), { jsonrpc: '2.0', id: 'a', result: null });
  t.deepEqual(await rpc(request('b', 'sr_scan')), {
    jsonrpc: '2.0',
    id: 'b',
    result: [{ uuid: 'vdi-1', virtual_size: '1024' }],
  });
});

test('SM errors carry the SM code, the description and {name, opterr}', async (t) => {
  t.deepEqual(await rpc(request(2, 'vdi_delete')), {
    jsonrpc: '2.0',
    id: 2,
    error: { code: 24, message: SM_ERRORS.VDIInUse.description, data: { name: 'VDIInUse', opterr: 'attached to vm-1' } },
  });
  t.deepEqual((await rpc(request(3, 'vdi_resize'))).error, {
    code: 1200,
    message: SM_ERRORS.GenericException.description,
    data: { name: 'GenericException', opterr: 'disk exploded' },
  });
  t.deepEqual((await rpc(request(4, 'no_such_verb'))).error.data, { name: 'Unimplemented', opterr: 'unknown verb no_such_verb' });
  t.deepEqual((await rpc(request(5, 'vdi_create', { host_ref: 'h' }))).error.data, { name: 'BadRequest', opterr: 'args is missing' });
  t.deepEqual((await rpc(request(6, 'sr_get_driver_info', undefined))).result.name, 'Test');
});

test('protocol errors use the JSON-RPC codes', async (t) => {
  t.deepEqual(await rpc('{"jsonrpc": "2.0", "method": '), { jsonrpc: '2.0', id: null, error: { code: -32700, message: 'Parse error' } });
  t.is((await rpc(request(7, 'vdi_create', ['positional']))).error.code, -32602);
  t.is((await rpc(request(8, 'vdi_create', 'string'))).error.code, -32602);
  t.is((await rpc({ id: 9, method: 'sr_scan' })).error.code, -32600); // no "jsonrpc": "2.0"
  t.is((await rpc([])).error.code, -32600);
  t.is((await rpc(42)).error.code, -32600);
});

test('batches answer with an array, in order, skipping notifications', async (t) => {
  const responses = await rpc([
    request(1, 'vdi_create', { ...REQUEST_BASE, args: ['1', 'first'] }),
    { jsonrpc: '2.0', method: 'sr_attach', params: REQUEST_BASE }, // notification
    request(2, 'vdi_delete'),
    null,
    request(3, 'vdi_create', { ...REQUEST_BASE, args: ['1', 'third'] }),
  ]);
  t.is(responses.length, 4);
  t.deepEqual(responses[0].result, { uuid: 'new-vdi', location: 'first' });
  t.is(responses[1].error.code, 24);
  t.deepEqual(responses[2], { jsonrpc: '2.0', id: null, error: { code: -32600, message: 'Invalid Request' } });
  t.deepEqual(responses[3].result, { uuid: 'new-vdi', location: 'third' });
  // One answered member is still an array; only notifications: no output at all.
  t.true(Array.isArray(await rpc([request(1, 'sr_attach')])));
  t.is(await rpc([{ jsonrpc: '2.0', method: 'sr_attach', params: REQUEST_BASE }]), undefined);
  t.is(await rpc({ jsonrpc: '2.0', method: 'sr_attach', params: REQUEST_BASE }), undefined);
});
