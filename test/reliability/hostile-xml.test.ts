// Hostile XML-RPC on argv, as a toolstack calls the real FileSR executable:
// malformed and truncated documents, the largest argv Linux allows, deep
// nesting, entity expansion, external entities aimed at a canary secret,
// DOCTYPE tricks, mistyped methodName and params, invalid UTF-8. Each is
// exactly one fault with the documented code (lib/smapi/README.md), within
// 10 s and a bounded peak RSS; nothing on disk changes and the canary's
// secret never appears in stdout, stderr or SMlog.
import fs from 'node:fs';
import test from 'ava';
import { encodeMethodCall } from '../../lib/smapi/index.js';
import { assertNotInLog, expectArgvFaults, plantCanary, type ArgvCase } from '../helpers/hostile.js';
import { MiB } from '../helpers/model.js';
import { createArgs, createAttachedSr, createVdi, FILE_SR, makeSmEnv, request, SESSION_SECRET, withServer } from '../helpers/sm.js';
import { diskState } from '../helpers/sr-state.js';
import { seeded, soak, Tally } from '../helpers/tally.js';

const CHAP_SECRET = 'chap-SECRET-3c41';
/** Linux refuses a single argv string over MAX_ARG_STRLEN (32 pages = 128 KiB): the largest call a toolstack can make. */
const MAX_ARG = 128 * 1024 - 1;

const wrap = (body: string) => `<?xml version='1.0'?>\n<methodCall><methodName>sr_scan</methodName><params><param>${body}</param></params></methodCall>`;
const nested = (open: string, close: string, leaf: string, n: number) => open.repeat(n) + leaf + close.repeat(n);

test('hostile XML-RPC on argv: one fault with the right code, bounded, nothing changed, nothing read', async (t) => {
  const ctx = await makeSmEnv();
  const tally = new Tally('XML-RPC on argv (FileSR)');
  try {
    const vdi = await withServer(ctx, async (s) => {
      await createAttachedSr(s);
      return createVdi(s, 4 * MiB);
    });
    const canary = plantCanary(ctx);
    const url = `file://${canary.path}`;
    const valid = encodeMethodCall('vdi_create', [request(ctx, 'vdi_create', { args: createArgs(MiB), device_config: { chappassword: CHAP_SECRET } })]);
    const params = (p: Record<string, unknown>) => encodeMethodCall('vdi_delete', [{ ...request(ctx, 'vdi_delete', { vdi_uuid: vdi, vdi_location: vdi }), ...p }]);
    // A call that faults anyway (an unknown VDI), for tricks that a lax parser might let through.
    const unknown = '0b5e7e4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b';
    const harmless = encodeMethodCall('vdi_delete', [request(ctx, 'vdi_delete', { vdi_uuid: unknown, vdi_location: unknown })]);
    const x = (what: string, xml: string, codes: number[]): ArgvCase => ({ what, argv: [xml], codes });

    // Truncated at every N-th byte of a valid request (seeded offset): never well-formed, never acted on.
    const step = soak ? 1 : 83;
    const first = 1 + Math.floor(seeded(7)() * step);
    const cases: ArgvCase[] = [];
    for (let cut = first; cut < valid.trimEnd().length; cut += step) cases.push(x(`truncated at byte ${cut}`, valid.slice(0, cut), [1200]));

    const rnd = seeded(11);
    const garbage = Array.from({ length: 2000 }, () => String.fromCharCode(0x20 + Math.floor(rnd() * 0x5f))).join('');
    cases.push(
      x('printable garbage', garbage, [1200]),
      x('empty document', ' ', [1200]),
      x('two roots', valid + valid.replace("<?xml version='1.0'?>\n", ''), [1200]),
      x('mismatched tags', valid.replace('</params>', '</param>'), [1200]),
      x('an undefined entity', valid.replace('vdi_create</methodName>', '&xxe;</methodName>'), [1200]),
      x('a NUL character reference', valid.replace('Created by a test', 'a&#0;b'), [1200]),
      x('a huge numeric character reference', valid.replace('Created by a test', '&#x110000;'), [1200]),
      x('a methodResponse instead of a call', valid.replace(/methodCall/g, 'methodResponse'), [1200]),
      // Entities and DOCTYPE tricks: refused before any parser sees them.
      x('billion laughs', `<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa">${Array.from({ length: 9 }, (_, i) => `<!ENTITY ${String.fromCharCode(98 + i)} "${`&${String.fromCharCode(97 + i)};`.repeat(10)}">`).join('')}]><methodCall><methodName>&j;</methodName></methodCall>`, [1200]),
      x('XXE into methodName', `<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "${url}">]><methodCall><methodName>&x;</methodName><params/></methodCall>`, [1200]),
      x('XXE into a string value', valid.replace('<methodCall>', `<!DOCTYPE methodCall [<!ENTITY x SYSTEM "${url}">]><methodCall>`).replace('Created by a test', '&x;'), [1200]),
      x('XXE parameter entity', `<?xml version="1.0"?><!DOCTYPE m [<!ENTITY % p SYSTEM "${url}"> %p;]><methodCall><methodName>sr_scan</methodName></methodCall>`, [1200]),
      x('external DTD', `<?xml version="1.0"?><!DOCTYPE methodCall SYSTEM "${url}"><methodCall><methodName>sr_scan</methodName></methodCall>`, [1200]),
      x('lower-case doctype after a comment', `<?xml version="1.0"?><!-- x --><!doctype m [<!ENTITY x SYSTEM "${url}">]><methodCall><methodName>&x;</methodName></methodCall>`, [1200]),
      x('XInclude of the canary', harmless.replace('<methodCall>', `<methodCall xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="${url}" parse="text"/>`), [1200, 46, 144]),
      x('a processing instruction naming the canary', harmless.replace('<methodCall>', `<?xml-stylesheet href="${url}"?><methodCall>`), [1200, 46, 144]),
      // The largest argv string, and nesting far beyond the bounds, within it.
      x(`a ${MAX_ARG >> 10} KiB string`, wrap(`<value><string>${'A'.repeat(MAX_ARG - 200)}</string></value>`), [143]),
      x('an array of 5000 elements', wrap(`<value><array><data>${'<value><i4>1</i4></value>'.repeat(5000)}</data></array></value>`), [143]),
      x('2500 nested arrays', wrap(nested('<value><array><data>', '</data></array></value>', '<value>x</value>', 2500)), [1200]),
      x('1800 nested structs', wrap(nested('<value><struct><member><name>a</name>', '</member></struct></value>', '<value>x</value>', 1800)), [1200]),
      x('12000 nested unknown elements', wrap(nested('<a>', '</a>', '', 12000)), [1200]),
      x('65 nested arrays (one over the bound)', wrap(nested('<value><array><data>', '</data></array></value>', '<value>x</value>', 65)), [1200]),
      // methodName of the wrong type or content.
      x('methodName holding a struct', valid.replace('<methodName>vdi_create</methodName>', '<methodName><value><string>vdi_create</string></value></methodName>'), [1200, 38]),
      x('two methodNames', valid.replace('<methodName>vdi_create</methodName>', '<methodName>vdi_create</methodName><methodName>sr_delete</methodName>'), [1200]),
      x('no methodName', valid.replace('<methodName>vdi_create</methodName>', ''), [1200]),
      x('empty methodName', valid.replace('<methodName>vdi_create</methodName>', '<methodName></methodName>'), [1200, 38]),
      ...['__proto__', 'constructor', 'toString', '../../bin/sh', 'sr_scan; rm -rf /', 'x'.repeat(40_000)].map((name) =>
        x(`methodName ${JSON.stringify(name.slice(0, 20))}`, encodeMethodCall(name, [request(ctx, name)]), [38]),
      ),
      // params of the wrong type or number: a BadRequest naming the field.
      x('no params', valid.replace(/<params>[\s\S]*<\/params>/, ''), [143]),
      x('the request as an array', encodeMethodCall('vdi_create', [[request(ctx, 'vdi_create')]]), [143]),
      x('two structs', encodeMethodCall('vdi_create', [request(ctx, 'vdi_create'), request(ctx, 'vdi_create')]), [143]),
      x('an int instead of the struct', encodeMethodCall('vdi_create', [42]), [143]),
      x('host_ref an int', params({ host_ref: 7 }), [143]),
      x('args a struct', params({ args: { a: 'b' } }), [143]),
      x('args holding an int', params({ args: [1] }), [143]),
      x('device_config a string', params({ device_config: 'location=/' }), [143]),
      x('device_config nil', params({ device_config: null }), [143]),
      x('device_config holding an array', params({ device_config: { location: ['a'] } }), [143]),
      x('vdi_uuid an int', params({ vdi_uuid: 5 }), [143]),
      x('sr_sm_config a string', params({ sr_sm_config: 'x' }), [143]),
      // Python's int() reads it too; the request is still no struct.
      x('an i4 beyond 32 bits', wrap('<value><i4>99999999999999999999</i4></value>'), [143]),
      x('a boolean 2', wrap('<value><boolean>2</boolean></value>'), [1200]),
      x('a double "abc"', wrap('<value><double>abc</double></value>'), [1200]),
      x('an unknown value type', wrap('<value><bogus>1</bogus></value>'), [1200]),
      x('a struct member without a name', wrap('<value><struct><member><value>x</value></member></struct></value>'), [1200]),
    );

    // Invalid UTF-8 on argv: node strings cannot carry it, so xargs reads the raw bytes from a file.
    const rawCase = (what: string, bytes: Buffer, codes: number[]): ArgvCase => {
      const file = ctx.scratch('argv.bin');
      fs.writeFileSync(file, Buffer.concat([bytes, Buffer.from([0])]));
      return { what, file: 'xargs', argv: ['-0', '-a', file, FILE_SR], codes };
    };
    const bad = Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0xed, 0xa0, 0x80]);
    const splice = (xml: string, marker: string) => {
      const at = xml.indexOf(marker);
      return Buffer.concat([Buffer.from(xml.slice(0, at)), bad, Buffer.from(xml.slice(at + marker.length))]);
    };
    const del = encodeMethodCall('vdi_delete', [request(ctx, 'vdi_delete', { vdi_uuid: 'VDI-UUID', vdi_location: 'VDI-UUID' })]);
    cases.push(
      rawCase('invalid UTF-8 in methodName', splice(valid, 'vdi_create'), [38]),
      rawCase('invalid UTF-8 in vdi_uuid', splice(del, 'VDI-UUID'), [46, 144]),
      rawCase('invalid UTF-8 in an element name', splice(valid, 'methodName'), [1200]),
      rawCase('invalid UTF-8 everywhere', Buffer.from(Array.from({ length: 4000 }, () => 0x80 + Math.floor(rnd() * 0x80))), [1200]),
    );

    const before = diskState(ctx);
    const secrets = [canary.secret, SESSION_SECRET, CHAP_SECRET];
    const faults = await expectArgvFaults(t, ctx, FILE_SR, cases, tally, secrets);
    for (const f of faults) for (const s of secrets) t.false(f.includes(s), `no secret in the fault string ${f.slice(0, 80)}`);
    t.deepEqual(diskState(ctx), before, 'nothing on disk changed');
    assertNotInLog(t, ctx, secrets, tally);
    t.true(fs.existsSync(canary.path));
    tally.report(t);
  } finally {
    await ctx.cleanup();
  }
});
