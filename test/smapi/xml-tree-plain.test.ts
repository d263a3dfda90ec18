// The plain XML-RPC reader (lib/smapi/xml-tree-plain.ts) against the general
// parser it stands in for: on every document it reads, the tree is the one
// xml2js builds with the codec's options, key order included; every document
// outside its subset is left to the general parser (undefined).
import test from 'ava';
import xml2js from 'xml2js';
import { MAX_ELEMENT_DEPTH, encodeMethodCall, encodeResponse, parseMethodCall, parseMethodResponse } from '../../lib/smapi/index.js';
import { plainXmlRpcTree } from '../../lib/smapi/xml-tree-plain.js';
import { TEXT_KEY } from '../../lib/smapi/xmlrpc-value.js';
import { XmlRpcDateTime } from '../../lib/smapi/xmlrpc-value.js';

/** xml2js with the codec's options (lib/smapi/xmlrpc-codec.ts PARSER_OPTIONS). */
function generalTree(xml: string): unknown {
  let out: unknown;
  let failure: unknown;
  new xml2js.Parser({ explicitArray: true, explicitRoot: true, ignoreAttrs: true, charkey: TEXT_KEY, trim: false, normalize: false, emptyTag: '', strict: true, async: false }).parseString(xml, (err, value) => {
    failure = err;
    out = value;
  });
  if (failure) throw failure;
  return out;
}

/** Same tree, same key order at every level. */
function sameTree(t: import('ava').ExecutionContext, xml: string): void {
  const plain = plainXmlRpcTree(xml, MAX_ELEMENT_DEPTH);
  t.not(plain, undefined, `read as plain: ${JSON.stringify(xml.slice(0, 120))}`);
  t.is(JSON.stringify(plain), JSON.stringify(generalTree(xml)), JSON.stringify(xml.slice(0, 200)));
}

/** A value of every kind XML-RPC carries, with text that needs escaping and text that is all blank. */
function sampleValues(seed: number): unknown[] {
  const texts = ['', ' ', '\n\t ', 'plain', 'a & b < c > d " e \' f', '  padded  ', '☃ snow, 𝄞 clef', 'OpaqueRef:3f2a', '\u00a0nbsp\u00a0', '\u00a0', '1', ']]'];
  const text = (i: number) => texts[(seed + i) % texts.length]!;
  return [
    text(0),
    seed * 7919 - 1000,
    2 ** 40 + seed,
    seed % 2 === 0,
    seed / 7,
    null,
    new XmlRpcDateTime('20260102T03:04:05Z'),
    Buffer.from(text(1)),
    [],
    {},
    [text(2), [text(3), { [text(4) || 'k']: text(5) }], { nested: { deeper: [text(6), seed] } }],
    { Status: 'Success', Value: { uuid: text(7), sm_config: { 'vhd-parent': text(8), paused: 'true' }, other_config: {}, virtual_size: String(seed * 1024) } },
  ];
}

test('documents the codec writes read to the same tree as the general parser', (t) => {
  for (let seed = 0; seed < 40; seed++) {
    for (const value of sampleValues(seed)) {
      sameTree(t, encodeResponse(value));
      sameTree(t, encodeMethodCall('VDI.db_introduce', ['OpaqueRef:session', value, value]));
    }
  }
});

test('other layouts read the same: compact, indented, self-closed, no declaration, blank around the root', (t) => {
  const docs = [
    '<methodResponse><params><param><value><string>x</string></value></param></params></methodResponse>',
    '<?xml version="1.0" encoding="UTF-8"?><methodResponse><params><param><value>bare text</value></param></params></methodResponse>\n',
    "<?xml version='1.0'?>\n<methodCall>\n  <methodName>SR.get_record</methodName>\n  <params>\n    <param><value><string>s</string></value></param>\n    <param><value/></param>\n  </params>\n</methodCall>\n\n",
    '\n <methodResponse><params><param><value><struct><member><name>Status</name><value>Success</value></member><member><name>Value</name><value/></member></struct></value></param></params></methodResponse> \t',
    '<methodResponse><params><param><value><array><data/></array></value></param></params></methodResponse>',
    '<methodResponse><params><param><value><struct></struct></value></param></params></methodResponse>',
    '<methodResponse><params><param><value>  </value></param></params></methodResponse>',
    '<methodResponse><params><param><value><nil/></value></param></params></methodResponse>',
    '<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>78</int></value></member><member><name>faultString</name><value><string>x &amp; y</string></value></member></struct></value></fault></methodResponse>',
    // Not valid XML-RPC, still plain XML: the tree is the same, and the codec then refuses it the same way.
    '<methodCall><methodName>a</methodName>text beside<params/></methodCall>',
    '<methodCall><methodName>a</methodName><methodName>b</methodName></methodCall>',
    '<value>x</value>',
  ];
  for (const xml of docs) sameTree(t, xml);
});

test('documents outside the subset are left to the general parser', (t) => {
  const left = [
    '<methodResponse><params><param><value><string><![CDATA[x]]></string></value></param></params></methodResponse>',
    '<methodResponse><!-- c --><params/></methodResponse>',
    '<methodResponse><params><param><value><string>&#x2603;</string></value></param></params></methodResponse>',
    '<methodResponse><params><param><value><string>&nbsp;</string></value></param></params></methodResponse>',
    '<methodResponse><params><param><value><string>&constructor;</string></value></param></params></methodResponse>',
    '<methodResponse><params><param><value><string>a &amp b</string></value></param></params></methodResponse>',
    '<methodResponse><params a="1"/></methodResponse>',
    '<methodResponse ><params/></methodResponse>',
    '<methodResponse><params></params ></methodResponse>',
    '<methodResponse><constructor/></methodResponse>',
    '<methodResponse><__proto__/></methodResponse>',
    '<methodResponse><params></param></methodResponse>',
    '<methodResponse><params>',
    '<methodResponse><params/></methodResponse><methodResponse/>',
    '<methodResponse/>trailing',
    'leading<methodResponse/>',
    '\u00a0<methodResponse/>',
    '\ufeff<methodResponse/>',
    '<methodResponse>\r\n</methodResponse>',
    '<methodResponse><params><param><value><string>\u0001</string></value></param></params></methodResponse>',
    '<methodResponse><params><param><value><string>]]></string></value></param></params></methodResponse>',
    ' <?xml version="1.0"?><methodResponse/>',
    '<?xml version="1.0"?><?other?><methodResponse/>',
    '<?xml version="1.0"',
    '',
    '   ',
    '<methodResponse',
  ];
  for (const xml of left) t.is(plainXmlRpcTree(xml, MAX_ELEMENT_DEPTH), undefined, JSON.stringify(xml));
});

test('a document deeper than the bound is left to the general parser, which refuses it', (t) => {
  const deep = (n: number) => '<value><array><data>'.repeat(n) + '<value>x</value>' + '</data></array></value>'.repeat(n);
  const within = Math.floor((MAX_ELEMENT_DEPTH - 4) / 3);
  const doc = (n: number) => `<methodResponse><params><param>${deep(n)}</param></params></methodResponse>`;
  t.not(plainXmlRpcTree(doc(within), MAX_ELEMENT_DEPTH), undefined);
  t.is(plainXmlRpcTree(doc(within + 1), MAX_ELEMENT_DEPTH), undefined);
  t.throws(() => parseMethodResponse(doc(within + 1)), { message: /deeper than/ });
});

test('the codec reads the same values either way', (t) => {
  for (const value of sampleValues(3)) {
    const reply = encodeResponse(value);
    const parsed = parseMethodResponse(reply);
    t.deepEqual(parsed, { kind: 'result', value: value instanceof Buffer ? value : value });
    const call = parseMethodCall(encodeMethodCall('m', [value]));
    t.deepEqual(call.params, [value]);
  }
});
