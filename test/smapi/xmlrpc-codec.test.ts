import test from 'ava';
import { MAX_ELEMENT_DEPTH, MAX_REQUEST_BYTES, SMError, parseMethodCall, parseRequest, runXmlRpc } from '../../lib/smapi/index.js';
import { testDriver } from './fixtures/test-driver.js';
import { useTempSmRoot } from './helpers.js';

useTempSmRoot();

// As a toolstack sends it: compact, untyped <value>text</value> strings mixed
// with typed ones, a subtask_of with pipes, an empty sm_config struct.
const VDI_CREATE = `<?xml version="1.0"?>
<methodCall><methodName>vdi_create</methodName><params><param><value><struct>
<member><name>host_ref</name><value>OpaqueRef:5f3f4f8e-1b9a-4c55-9a8b-2d0c0b6f1e01</value></member>
<member><name>command</name><value>vdi_create</value></member>
<member><name>args</name><value><array><data>
<value>10737418240</value><value>Ubuntu disk ☃</value><value>Created by template provisioner</value>
<value/><value>false</value><value>19700101T00:00:00Z</value><value></value><value>false</value>
</data></array></value></member>
<member><name>device_config</name><value><struct>
<member><name>SRmaster</name><value>true</value></member>
<member><name>location</name><value><string>/srv/sr1</string></value></member>
</struct></value></member>
<member><name>session_ref</name><value>OpaqueRef:0b1c2d3e-aaaa-bbbb-cccc-ddddeeeeffff</value></member>
<member><name>sr_ref</name><value>OpaqueRef:1f2e3d4c-0000-1111-2222-333344445555</value></member>
<member><name>sr_uuid</name><value>d1b230d9-3f8e-4b1a-9c3d-5e6f7a8b9c0d</value></member>
<member><name>vdi_type</name><value>system</value></member>
<member><name>vdi_sm_config</name><value><struct></struct></value></member>
<member><name>subtask_of</name><value>DummyRef:|3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f|VDI.create</value></member>
</struct></value></param></params></methodCall>`;

test('a realistic vdi_create methodCall parses into the typed request', (t) => {
  const call = parseMethodCall(VDI_CREATE);
  t.is(call.methodName, 'vdi_create');
  const req = parseRequest(call.methodName, call.params);
  t.deepEqual(req.args, [
    '10737418240',
    'Ubuntu disk ☃',
    'Created by template provisioner',
    '',
    'false',
    '19700101T00:00:00Z',
    '',
    'false',
  ]);
  t.deepEqual(req.device_config, { SRmaster: 'true', location: '/srv/sr1' });
  t.is(req.host_ref, 'OpaqueRef:5f3f4f8e-1b9a-4c55-9a8b-2d0c0b6f1e01');
  t.is(req.sr_uuid, 'd1b230d9-3f8e-4b1a-9c3d-5e6f7a8b9c0d');
  t.is(req.vdi_type, 'system');
  t.deepEqual(req.vdi_sm_config, {});
  t.is(req.subtask_of, 'DummyRef:|3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f|VDI.create');
});

const call = (value: string) =>
  `<?xml version="1.0"?><methodCall><methodName>m</methodName><params><param><value>${value}</value></param></params></methodCall>`;
const only = (value: string) => parseMethodCall(call(value)).params[0];

test('string values keep their whitespace; empty forms are ""', (t) => {
  t.is(only('  two spaces  '), '  two spaces  ');
  t.is(only('<string>  \n\t </string>'), '  \n\t ');
  t.is(only('   '), '   ');
  t.is(only(''), '');
  t.is(only('<string/>'), '');
  t.is(only('<string></string>'), '');
  t.is(only('<string><![CDATA[ <raw> & ]]></string>'), ' <raw> & ');
  t.is(only('<string>&#x2603;&amp;&lt;&gt;&quot;&apos;</string>'), '☃&<>"\'');
  t.is(only('\n<string>x</string>\n'), 'x');
});

test('scalar types decode', (t) => {
  t.is(only('<int>-12</int>'), -12);
  t.is(only('<i4> 7 </i4>'), 7);
  t.is(only('<i8>10737418240</i8>'), 10737418240);
  t.is(only('<boolean>1</boolean>'), true);
  t.is(only('<boolean>0</boolean>'), false);
  t.is(only('<double>-1.5e3</double>'), -1500);
  t.is(only('<nil/>'), null);
  t.deepEqual(only('<base64>aGVs\nbG8=</base64>'), Buffer.from('hello'));
  t.deepEqual(only('<array><data/></array>'), []);
  t.deepEqual(only('<struct/>'), {});
});

test('a struct member named __proto__ is plain data', (t) => {
  const value = only('<struct><member><name>__proto__</name><value><string>x</string></value></member></struct>') as Record<string, unknown>;
  t.is(Object.getPrototypeOf(value), Object.prototype);
  t.deepEqual(Object.keys(value), ['__proto__']);
});

function assertMalformed(t: import('ava').ExecutionContext, xml: string, pattern: RegExp) {
  const err = t.throws(() => parseMethodCall(xml), { instanceOf: SMError });
  t.is(err?.code, 1200);
  t.regex(err?.opterr ?? '', pattern);
}

test('malformed documents are GenericException faults naming the problem', (t) => {
  assertMalformed(t, '', /empty document/);
  assertMalformed(t, 'not xml at all', /malformed XML-RPC/);
  assertMalformed(t, '<methodCall><methodName>x</methodName>', /malformed XML-RPC/);
  assertMalformed(t, '<methodResponse/>', /expected <methodCall>/);
  assertMalformed(t, '<methodCall><params/></methodCall>', /missing <methodName>/);
  assertMalformed(t, '<methodCall><methodName> </methodName></methodCall>', /empty <methodName>/);
  assertMalformed(t, '<methodCall><methodName>x</methodName></methodCall><extra/>', /after the document element/);
  assertMalformed(t, '<methodCall><methodName>x</methodName></methodCall>trailing', /malformed XML-RPC/);
  assertMalformed(t, call('<int>twelve</int>'), /bad int/);
  assertMalformed(t, call('<boolean>yes</boolean>'), /bad boolean/);
  assertMalformed(t, call('<base64>!!!</base64>'), /bad base64/);
  assertMalformed(t, call('<float32>1</float32>'), /unknown value type/);
  assertMalformed(t, call('text<string>x</string>'), /mixed/);
  assertMalformed(t, call('<string>a</string><string>b</string>'), /one typed element/);
  assertMalformed(t, call('<struct><member><name>a</name></member></struct>'), /<member>/);
  assertMalformed(t, call('<string>&bogus;</string>'), /entity/i);
});

test('DOCTYPE, entity expansion and XXE are refused without reading anything', async (t) => {
  const xxe = `<?xml version="1.0"?>
<!DOCTYPE m [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<methodCall><methodName>vdi_generate_config</methodName><params><param><value>&xxe;</value></param></params></methodCall>`;
  const billionLaughs = `<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<methodCall><methodName>m</methodName><params><param><value>&lol2;</value></param></params></methodCall>`;
  const lowercase = '<!doctype x><methodCall><methodName>m</methodName></methodCall>';
  for (const xml of [xxe, billionLaughs, lowercase]) {
    assertMalformed(t, xml, /DOCTYPE/);
    const response = await runXmlRpc(testDriver, xml);
    t.regex(response, /<name>faultCode<\/name>\n<value><int>1200<\/int>/);
    t.false(response.includes('root:'));
    t.false(response.includes('lollol'));
  }
});

test('input size is bounded', (t) => {
  const filler = 'x'.repeat(MAX_REQUEST_BYTES);
  assertMalformed(t, call(`<string>${filler}</string>`), /larger than/);
  // Multi-byte characters count as bytes, not characters.
  assertMalformed(t, call(`<string>${'é'.repeat(MAX_REQUEST_BYTES / 2 + 1)}</string>`), /larger than/);
});

test('nesting depth is bounded while parsing', (t) => {
  assertMalformed(t, '<a>'.repeat(MAX_ELEMENT_DEPTH + 1), /nested deeper/);
  // Deep but within the element bound: the value decoder's own limit applies.
  const deepArray = '<array><data><value>'.repeat(65) + 'x' + '</value></data></array>'.repeat(65);
  assertMalformed(t, call(deepArray), /nested deeper than 64/);
  // A million open tags fail fast instead of building a million-node tree.
  const started = Date.now();
  assertMalformed(t, '<a>'.repeat(1_000_000), /nested deeper/);
  t.true(Date.now() - started < 5000);
});
