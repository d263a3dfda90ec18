import test from 'ava';
import {
  XmlRpcDateTime,
  encodeFault,
  encodeMethodCall,
  encodeResponse,
  parseMethodCall,
  parseMethodResponse,
  pythonFloatRepr,
} from '../../lib/smapi/index.js';
import { python, useTempSmRoot } from './helpers.js';

useTempSmRoot();

/** Encode as a response, parse it back, return the value. */
function roundTrip(value: unknown): unknown {
  const parsed = parseMethodResponse(encodeResponse(value));
  if (parsed.kind !== 'result') throw new Error('expected a result');
  return parsed.value;
}

test('every type round-trips through encode and decode', (t) => {
  const value = {
    s: 'plain',
    empty: '',
    spaces: '  leading and trailing  ',
    whitespaceOnly: ' \t\n ',
    newlines: 'line1\nline2\n',
    markup: 'a & b < c > d "q" \'s\' ]]>',
    unicode: 'héllo wörld ☃ 日本語 😀',
    int: 42,
    negative: -7,
    zero: 0,
    int32max: 2147483647,
    int32min: -2147483648,
    bigSize: 10737418240,
    double: 1.5,
    tiny: 1e-7,
    yes: true,
    no: false,
    nil: null,
    bytes: Buffer.from([0, 1, 2, 254, 255]),
    longBytes: Buffer.alloc(200, 7),
    emptyBytes: Buffer.alloc(0),
    when: new XmlRpcDateTime('20240102T03:04:05'),
    list: [1, 'two', [3, [4, { five: 5 }]], {}, []],
    nested: { a: { b: { c: ['deep', { d: null }] } } },
  };
  t.deepEqual(roundTrip(value), value);
});

test('undefined is nil at the top and in arrays, and dropped from structs', (t) => {
  t.is(roundTrip(undefined), null);
  t.deepEqual(roundTrip([undefined, 1]), [null, 1]);
  t.deepEqual(roundTrip({ a: undefined, b: 1 }), { b: 1 });
});

test('Date encodes as a UTC dateTime.iso8601', (t) => {
  const value = roundTrip(new Date(Date.UTC(2023, 10, 2, 9, 8, 7)));
  t.deepEqual(value, new XmlRpcDateTime('20231102T09:08:07'));
});

test('responses match Python xmlrpc.client.dumps byte for byte', (t) => {
  const values: unknown[] = [
    { uuid: 'x', location: 'y' },
    null,
    'a string with <markup> & "quotes" and \'apostrophes\'',
    '',
    '  \t whitespace\nand\r\ncarriage returns  ',
    'unicode: é ☃ 日本 😀 \u2028',
    0,
    -1,
    2147483647,
    -2147483648,
    true,
    false,
    [],
    {},
    [1, 'a', [2, [3, []]], { k: [null, true] }],
    { params: '/dev/sm/backend/x', params_nbd: 'nbd:unix:/x', o_direct: true, o_direct_reason: '', xenstore_data: {} },
    {
      name: 'FileSR',
      capabilities: ['SR_PROBE', 'VDI_CREATE'],
      configuration: [{ key: 'location', description: 'local directory path (required)' }],
    },
    { 'key with <&>': 'v' },
    '<SRlist><SR><UUID>abc</UUID></SR></SRlist>',
  ];
  const expected = python(values.map((value) => ({ kind: 'response' as const, value })));
  values.forEach((value, i) => t.is(encodeResponse(value), expected[i], JSON.stringify(value)));
});

test('floats, bytes and dateTimes match Python', (t) => {
  const floats = [1.5, -2.25, 0.1, 1e-7, 1.5e-5, 0.0001, 123456789012.5, 1e300, -1e-300, 2.5e15 + 0.5, 1.2345678901234567e16, Math.PI];
  const expected = python([
    ...floats.map((value) => ({ kind: 'response' as const, value: { $float: value } })),
    { kind: 'response', value: { $b64: Buffer.from('abc').toString('base64') } },
    { kind: 'response', value: { $b64: Buffer.alloc(200, 0xa5).toString('base64') } },
    { kind: 'response', value: { $b64: '' } },
    { kind: 'response', value: { $dt: '20240101T00:00:00' } },
  ]);
  floats.forEach((value, i) => t.is(encodeResponse(value), expected[i], String(value)));
  t.is(encodeResponse(Buffer.from('abc')), expected[floats.length]);
  t.is(encodeResponse(Buffer.alloc(200, 0xa5)), expected[floats.length + 1]);
  t.is(encodeResponse(Buffer.alloc(0)), expected[floats.length + 2]);
  t.is(encodeResponse(new XmlRpcDateTime('20240101T00:00:00')), expected[floats.length + 3]);
});

test('pythonFloatRepr matches repr() around the exponent thresholds', (t) => {
  const values = [1e15, 1e16, 9999999999999998, 0.001, 0.0001, 0.00001, 1.7976931348623157e308, 5e-324, 0.5, 100.25];
  const expected = python(values.map((value) => ({ kind: 'float' as const, value })));
  values.forEach((value, i) => t.is(pythonFloatRepr(value), expected[i], String(value)));
  t.is(pythonFloatRepr(Infinity), 'inf');
  t.is(pythonFloatRepr(-Infinity), '-inf');
  t.is(pythonFloatRepr(NaN), 'nan');
  t.is(pythonFloatRepr(-0), '-0.0');
});

test('faults match Python byte for byte', (t) => {
  const cases = [
    { code: 24, string: 'The VDI is in use [opterr=attached to vm-1]' },
    { code: 1200, string: 'An unexpected error <&> happened' },
    { code: 38, string: '' },
  ];
  const expected = python(cases.map((c) => ({ kind: 'fault' as const, ...c })));
  cases.forEach((c, i) => t.is(encodeFault(c.code, c.string), expected[i]));
});

test('methodCalls match Python and Python reads ours', (t) => {
  const params = [
    {
      host_ref: 'OpaqueRef:h',
      command: 'vdi_create',
      args: ['10737418240', 'disk ☃', '', 'false'],
      device_config: { SRmaster: 'true', location: '/srv/sr1' },
    },
  ];
  const call = encodeMethodCall('vdi_create', params);
  const [expected, loaded] = python([
    { kind: 'call', method: 'vdi_create', params },
    { kind: 'loads', xml: encodeResponse({ s: 'é ☃', n: [1, 2.5, null, true], b: Buffer.from('hi') }) },
  ]);
  t.is(call, expected);
  t.deepEqual(parseMethodCall(call), { methodName: 'vdi_create', params });
  t.deepEqual(JSON.parse(loaded), { method: null, params: [{ s: 'é ☃', n: [1, 2.5, null, true], b: 'aGk=' }] });
});

test('characters XML cannot carry become U+FFFD (Python would emit invalid XML)', (t) => {
  const xml = encodeResponse('a\u0001b\u0000c\uFFFEd\uD800e');
  t.false(/[\u0000\u0001\uFFFE\uD800]/.test(xml));
  t.is(roundTrip('a\u0001b\u0000c\uFFFEd\uD800e'), 'a\uFFFDb\uFFFDc\uFFFDd\uFFFDe');
  // A valid surrogate pair is kept.
  t.is(roundTrip('😀'), '😀');
});

test('integers beyond 32 bits are written as <i8> and read back exactly', (t) => {
  t.true(encodeResponse(10737418240).includes('<i8>10737418240</i8>'));
  t.is(roundTrip(10737418240), 10737418240);
  t.is(roundTrip(2n ** 63n - 1n), 2n ** 63n - 1n);
  t.is(roundTrip(5n), 5);
});

test('values that cannot be encoded are refused, not mangled', (t) => {
  t.throws(() => encodeResponse(() => 1), { instanceOf: TypeError });
  t.throws(() => encodeResponse(Symbol('s')), { instanceOf: TypeError });
  t.throws(() => encodeResponse(new (class Thing {})()), { instanceOf: TypeError });
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  t.throws(() => encodeResponse(cyclic), { message: /contains itself/ });
  let deep: unknown = 'leaf';
  for (let i = 0; i < 100; i++) deep = [deep];
  t.throws(() => encodeResponse(deep), { message: /deeper/ });
});

test('Map encodes as a struct in insertion order', (t) => {
  const map = new Map<string, unknown>([
    ['z', 1],
    ['1', 2],
  ]);
  t.is(encodeResponse(map).indexOf('<name>z</name>') < encodeResponse(map).indexOf('<name>1</name>'), true);
});
