// A request outside the plain XML-RPC subset (a comment, a character
// reference, CDATA) through the bundled driver executable: the driver loads
// the general XML parser only for such a document (lib/smapi/xmlrpc-codec.ts),
// and must then find it and read the request exactly.
import test from 'ava';
import { encodeMethodCall } from '../../lib/smapi/index.js';
import { callDriverRaw, createArgs, FILE_SR, makeSmEnv, request, xml } from '../helpers/sm.js';
import { readMetadata } from '../helpers/sr-state.js';

test('a request with a comment, a character reference and CDATA is answered, its values read exactly', async (t) => {
  const ctx = await makeSmEnv();
  await xml(ctx, 'sr_create', { args: ['0'] });
  await xml(ctx, 'sr_attach');
  const document = encodeMethodCall('vdi_create', [request(ctx, 'vdi_create', { args: createArgs(1024 * 1024, 'LABEL') })])
    .replace('<methodCall>', '<methodCall><!-- written by hand -->')
    .replace('LABEL', 'caf&#233;<![CDATA[ & <more>]]>');
  const r = await callDriverRaw(document, ctx.env, { driver: FILE_SR });
  t.is(r.code, 0, r.stderr);
  if (r.response.kind !== 'result') return t.fail(`fault ${r.response.faultCode}: ${r.response.faultString}`);
  const { uuid } = r.response.value as { uuid: string };
  t.is(readMetadata(ctx).vdis[uuid]?.name_label, 'café & <more>');
});
