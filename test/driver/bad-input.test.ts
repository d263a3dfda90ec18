// Bad input through the real driver executable: each case is a fault with the
// right SM code, stdout holds exactly one methodResponse, the exit code is 0,
// nothing on disk changes (listing + hashes of SM_ROOT and of the directory
// holding the SR, before and after), and no secret reaches SMlog.
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { encodeMethodCall } from '../../lib/smapi/index.js';
import { MiB, pattern } from '../helpers/model.js';
import {
  callDriverRaw,
  callJson,
  createArgs,
  createAttachedSr,
  createVdi,
  makeSmEnv,
  mapLimit,
  readSmlog,
  request,
  SESSION_SECRET,
  snapshot,
  withServer,
  type SmEnv,
} from '../helpers/sm.js';
import { depthOf, diskState, readTree, writeVdi } from '../helpers/sr-state.js';

const CHAP_SECRET = 'chap-SECRET-a9e3';
const INCOMING_SECRET = 'incoming-SECRET-77b0';
const secretConfig = { chappassword: CHAP_SECRET, incoming_chappassword: INCOMING_SECRET, chapuser: 'admin' };

interface Case {
  what: string;
  /** A whole methodCall document (or garbage). */
  xml: string;
  codes: number[];
}

function call(ctx: SmEnv, verb: string, extra: Record<string, unknown>, replaceConfig?: Record<string, string>): string {
  const params = request(ctx, verb, { ...extra, device_config: secretConfig });
  if (replaceConfig) params.device_config = replaceConfig;
  return encodeMethodCall(verb, [params]);
}

async function expectFaults(t: ExecutionContext, ctx: SmEnv, cases: Case[]): Promise<void> {
  const before = diskState(ctx);
  await mapLimit(cases, 2, async (c) => {
    const r = await callDriverRaw(c.xml, ctx.env);
    t.is(r.code, 0, `${c.what}: exit code 0`);
    t.is(r.signal, null, `${c.what}: no signal`);
    t.is(r.stdout.match(/<methodResponse>/g)?.length, 1, `${c.what}: exactly one methodResponse`);
    t.true(r.stdout.startsWith("<?xml version='1.0'?>\n<methodResponse>"), `${c.what}: nothing before the response`);
    t.true(r.stdout.endsWith('</methodResponse>\n'), `${c.what}: nothing after the response`);
    if (r.response.kind !== 'fault') {
      t.fail(`${c.what}: expected a fault, got ${JSON.stringify(r.response.value)}`);
      return;
    }
    t.true(c.codes.includes(r.response.faultCode), `${c.what}: fault ${r.response.faultCode} (${r.response.faultString}), expected ${c.codes.join(' or ')}`);
  });
  t.deepEqual(diskState(ctx), before, 'nothing on disk changed');
}

function assertNoSecrets(t: ExecutionContext, ctx: SmEnv): void {
  const log = readSmlog(ctx);
  t.true(log.length > 0);
  for (const secret of [SESSION_SECRET, CHAP_SECRET, INCOMING_SECRET, 'SECRET']) t.false(log.includes(secret), `SMlog holds no ${secret}`);
  t.regex(log, /\*\*\*\*\*\*/, 'secrets are masked, not dropped');
}

async function setUp(ctx: SmEnv): Promise<{ vdi: string; snap: string; busy: string; readOnly: string }> {
  return withServer(ctx, async (s) => {
    await createAttachedSr(s);
    const vdi = await createVdi(s, 8 * MiB);
    await writeVdi(ctx, vdi, 0, pattern(7, 3 * MiB));
    const snap = await snapshot(s, vdi);
    // A VDI in use, and a read-only one (a single snapshot is the old image itself, read-only).
    const busy = await createVdi(s, 4 * MiB);
    await s.call('vdi_attach', { vdi_uuid: busy, vdi_location: busy, args: ['true'] });
    await s.call('vdi_activate', { vdi_uuid: busy, vdi_location: busy, args: ['true'] });
    const readOnly = await snapshot(s, busy, 'single');
    // Canaries where an escaping path would land.
    fs.mkdirSync(path.join(ctx.base, 'etc'));
    fs.writeFileSync(path.join(ctx.base, 'etc', 'passwd'), 'root:x:0:0::/root:/bin/sh\n');
    fs.writeFileSync(path.join(ctx.base, 'etc.vhd'), 'not an image');
    fs.writeFileSync(path.join(ctx.base, 'store', 'outside.vhd'), 'not an image');
    return { vdi, snap, busy, readOnly };
  });
}

test('malformed requests, unknown verbs, missing location, bad sizes, unknown VDIs, a second sr_create', async (t) => {
  const ctx = await makeSmEnv();
  try {
    const { vdi, busy, readOnly } = await setUp(ctx);
    const unknown = '0b5e7e4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b';
    const valid = call(ctx, 'vdi_create', { args: createArgs(MiB) });
    const noLocation = (verb: string) => call(ctx, verb, { args: ['0'] }, { SRmaster: 'true', ...secretConfig });
    const vdiCase = (verb: string, extra: Record<string, unknown>) => call(ctx, verb, { vdi_uuid: vdi, vdi_location: vdi, ...extra });
    const cases: Case[] = [
      // The session_ref comes first, so the start of the broken request (which is logged) holds it.
      {
        what: 'truncated XML',
        xml: `<?xml version='1.0'?>\n<methodCall>\n<methodName>vdi_create</methodName>\n<params><param><value><struct><member><name>session_ref</name><value><string>${SESSION_SECRET}</string></value></member><member><name>device_config</name><value><struct><member><name>chappassword</name><value>${CHAP_SECRET}</value></member>`,
        codes: [1200],
      },
      { what: 'not XML at all', xml: 'hello, storage manager', codes: [1200] },
      { what: 'a DOCTYPE with an entity', xml: `<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><methodCall><methodName>&e;</methodName></methodCall>`, codes: [1200] },
      { what: 'a methodResponse instead of a call', xml: valid.replace(/methodCall/g, 'methodResponse'), codes: [1200] },
      { what: 'unknown verb', xml: call(ctx, 'vdi_frobnicate', {}), codes: [38] },
      { what: 'sr_create without location', xml: noLocation('sr_create'), codes: [94] },
      { what: 'sr_attach without location', xml: noLocation('sr_attach'), codes: [94] },
      { what: 'sr_probe without location', xml: noLocation('sr_probe'), codes: [94] },
      { what: 'sr_create on a relative location', xml: call(ctx, 'sr_create', { args: ['0'] }, { SRmaster: 'true', location: 'relative/dir' }), codes: [94] },
      { what: 'vdi_create size "abc"', xml: call(ctx, 'vdi_create', { args: createArgs('abc') }), codes: [79] },
      { what: 'vdi_create size "-1048576"', xml: call(ctx, 'vdi_create', { args: createArgs('-1048576') }), codes: [79] },
      { what: 'vdi_create size "0"', xml: call(ctx, 'vdi_create', { args: createArgs('0') }), codes: [79] },
      { what: 'vdi_create size "1e9"', xml: call(ctx, 'vdi_create', { args: createArgs('1e9') }), codes: [79] },
      { what: 'vdi_create size beyond the VHD maximum', xml: call(ctx, 'vdi_create', { args: createArgs('99999999999999') }), codes: [79] },
      { what: 'vdi_create without a size', xml: call(ctx, 'vdi_create', { args: [] }), codes: [79] },
      { what: 'vdi_resize to "abc"', xml: vdiCase('vdi_resize', { args: ['abc'] }), codes: [79] },
      { what: 'vdi_resize to "-5"', xml: vdiCase('vdi_resize', { args: ['-5'] }), codes: [79] },
      { what: 'vdi_resize shrinking', xml: vdiCase('vdi_resize', { args: [String(4 * MiB)] }), codes: [79] },
      { what: 'vdi_resize_online to "12.5"', xml: vdiCase('vdi_resize_online', { args: ['12.5'] }), codes: [79] },
      { what: 'vdi_attach of an unknown VDI', xml: call(ctx, 'vdi_attach', { vdi_uuid: unknown, vdi_location: unknown, args: ['true'] }), codes: [144, 46] },
      { what: 'vdi_delete of an unknown VDI', xml: call(ctx, 'vdi_delete', { vdi_uuid: unknown, vdi_location: unknown }), codes: [144, 46] },
      { what: 'vdi_snapshot of an unknown VDI', xml: call(ctx, 'vdi_snapshot', { vdi_uuid: unknown, vdi_location: unknown }), codes: [144, 46] },
      { what: 'vdi_snapshot without vdi_uuid', xml: call(ctx, 'vdi_snapshot', {}), codes: [144, 46] },
      { what: 'a second sr_create on the same location (same uuid)', xml: call(ctx, 'sr_create', { args: ['0'] }), codes: [42, 61] },
      {
        what: 'a second sr_create on the same location (another uuid)',
        xml: call(ctx, 'sr_create', { args: ['0'], sr_uuid: '5d0f4c8e-9b7a-4c3d-8e2f-1a0b9c8d7e6f' }),
        codes: [42, 61],
      },
      { what: 'sr_create where the parent directory is missing', xml: call(ctx, 'sr_create', { args: ['0'] }, { SRmaster: 'true', location: path.join(ctx.base, 'no', 'such', 'dir') }), codes: [61] },
      { what: 'sr_delete while VDIs remain', xml: call(ctx, 'sr_delete', {}), codes: [39] },
      { what: 'vdi_delete of an attached VDI', xml: call(ctx, 'vdi_delete', { vdi_uuid: busy, vdi_location: busy }), codes: [24] },
      { what: 'sr_detach while a VDI is active', xml: call(ctx, 'sr_detach', {}), codes: [16] },
      { what: 'writable vdi_attach of a read-only snapshot', xml: call(ctx, 'vdi_attach', { vdi_uuid: readOnly, vdi_location: readOnly, args: ['true'] }), codes: [46] },
      { what: 'request without device_config', xml: encodeMethodCall('sr_scan', [{ host_ref: 'OpaqueRef:h', session_ref: SESSION_SECRET, args: [], sr_uuid: ctx.sr }]), codes: [143] },
      { what: 'command differs from the method', xml: encodeMethodCall('vdi_delete', [{ ...request(ctx, 'vdi_create'), vdi_uuid: vdi }]), codes: [143] },
    ];
    await expectFaults(t, ctx, cases);
    assertNoSecrets(t, ctx);
  } finally {
    await ctx.cleanup();
  }
});

test('paths from requests never leave the SR: ../ in vdi_uuid, vdi_location, sr_uuid and location', async (t) => {
  const ctx = await makeSmEnv();
  try {
    const { vdi } = await setUp(ctx);
    const escapes = ['../../etc', '../../etc/passwd', '../outside', '/etc/passwd', `${vdi}/../../etc`, `../sr1/${vdi}`, 'etc', '..', ''];
    const verbs = ['vdi_attach', 'vdi_activate', 'vdi_detach', 'vdi_delete', 'vdi_snapshot', 'vdi_clone', 'vdi_resize', 'vdi_update', 'vdi_generate_config'];
    const before = diskState(ctx);
    // The argv XML path for a few (one process each), then one --json batch for the whole sweep.
    await expectFaults(t, ctx, [
      { what: 'vdi_attach ../../etc', xml: call(ctx, 'vdi_attach', { vdi_uuid: '../../etc', vdi_location: '../../etc', args: ['true'] }), codes: [46, 144] },
      { what: 'vdi_delete ../../etc', xml: call(ctx, 'vdi_delete', { vdi_uuid: '../../etc', vdi_location: '../../etc' }), codes: [46, 144] },
      { what: 'vdi_introduce ../../etc', xml: call(ctx, 'vdi_introduce', { vdi_location: '../../etc', vdi_uuid: '../../etc' }), codes: [46, 144] },
      { what: 'sr_attach with sr_uuid ../../etc', xml: call(ctx, 'sr_attach', { sr_uuid: '../../etc' }), codes: [47] },
      { what: 'sr_create on ../ location', xml: call(ctx, 'sr_create', { args: ['0'] }, { SRmaster: 'true', location: `${ctx.location}/../../etc` }), codes: [94] },
    ]);
    const calls: Array<{ verb: string; extra: Record<string, unknown> }> = [];
    for (const verb of verbs) for (const bad of escapes) calls.push({ verb, extra: { vdi_uuid: bad, vdi_location: bad, args: verb === 'vdi_resize' ? [String(64 * MiB)] : ['true'], device_config: secretConfig } });
    for (const bad of escapes) calls.push({ verb: 'vdi_introduce', extra: { vdi_location: bad, device_config: secretConfig } });
    for (const bad of escapes.filter((e) => e !== '')) {
      for (const verb of ['sr_attach', 'sr_scan', 'sr_detach', 'sr_delete', 'vdi_create']) calls.push({ verb, extra: { sr_uuid: bad, args: createArgs(MiB), device_config: secretConfig } });
    }
    const { responses, run } = await callJson(ctx, calls);
    t.is(run.code, 0);
    t.is(responses.length, calls.length);
    responses.forEach((r, i) => {
      const c = calls[i];
      const expected = c.verb.startsWith('sr_') || c.verb === 'vdi_create' ? [47] : [46, 144];
      t.true(r.error !== undefined && expected.includes(r.error.code), `${c.verb} ${JSON.stringify(c.extra.vdi_uuid ?? c.extra.vdi_location ?? c.extra.sr_uuid)}: ${JSON.stringify(r.error ?? r.result)}`);
    });
    t.deepEqual(diskState(ctx), before, 'nothing on disk changed');
    t.is(fs.readFileSync(path.join(ctx.base, 'etc', 'passwd'), 'utf8'), 'root:x:0:0::/root:/bin/sh\n');
    assertNoSecrets(t, ctx);
  } finally {
    await ctx.cleanup();
  }
});

test('a chain 30 deep takes no further snapshot (SnapshotChainTooLong 109)', async (t) => {
  const ctx = await makeSmEnv();
  try {
    const vdi = await withServer(ctx, async (s) => {
      await createAttachedSr(s);
      const vdi = await createVdi(s, 4 * MiB);
      for (let i = 0; i < 29; i++) await snapshot(s, vdi);
      return vdi;
    });
    const nodes = await readTree(ctx);
    t.is(depthOf(nodes, vdi), 30, '29 snapshots make a chain 30 deep');
    await expectFaults(t, ctx, [
      { what: 'the 30th snapshot', xml: call(ctx, 'vdi_snapshot', { vdi_uuid: vdi, vdi_location: vdi }), codes: [109] },
      { what: 'a clone of the same chain', xml: call(ctx, 'vdi_clone', { vdi_uuid: vdi, vdi_location: vdi }), codes: [109] },
    ]);
    assertNoSecrets(t, ctx);
  } finally {
    await ctx.cleanup();
  }
});
