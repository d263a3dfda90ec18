// A whole SR/VDI lifecycle through the real driver executable, exactly as a
// toolstack calls it (argv XML-RPC), then the same through `--json` batches and
// through a `--serve` socket. Every VDI's data is compared with an in-memory
// model after each change, using `sm-vhd write` / `sm-vhd export` / `sm-vhd check`.
// The argv and `--serve` walks also run with the stand-in xapi at the SR's
// XenAPI socket (xapi itself cannot run here): the calls then carry the refs
// xapi would send, and after each verb the stand-in's database must equal what
// xapi would hold for the SR as it is (test/helpers/xapi-expected.ts).
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { checkChain, exportRaw } from '../../lib/vhd/index.js';
import { SparseDisk, MiB, pattern } from '../helpers/model.js';
import {
  callDriver,
  callJson,
  createArgs,
  makeSmEnv,
  request,
  smVhd,
  startServer,
  SmFault,
  type SmEnv,
} from '../helpers/sm.js';
import { imagePath, readMetadata, readTree, writeVdi } from '../helpers/sr-state.js';
import { XapiDbHistory } from '../helpers/xapi-expected.js';
import type { XapiStandin } from '../helpers/xapi-standin.js';
import { HOST_REF, SR_REF, startStandinFor } from '../xapi/standin-world.js';

interface Call {
  verb: string;
  extra?: Record<string, unknown>;
}

interface Transport {
  name: 'xml' | 'json' | 'serve';
  /** How data is written, exported and checked: the sm-vhd executable (xml), or the same library calls in-process (faster). */
  tools: 'cli' | 'lib';
  batch(calls: Call[]): Promise<unknown[]>;
  close(): Promise<void>;
  /** With the stand-in xapi: its database, checked after each verb. */
  history?: XapiDbHistory;
}

/** After a verb, with the stand-in: the database holds what xapi would for the SR as it is (until the SR is gone). */
async function afterVerb(t: ExecutionContext, ctx: SmEnv, history: XapiDbHistory | undefined, c: Call): Promise<void> {
  if (!history) return;
  await history.verbDone(c.verb, c.extra?.vdi_uuid as string | undefined);
  if (fs.existsSync(ctx.location)) await history.assert(t, c.verb);
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function xmlTransport(t: ExecutionContext, ctx: SmEnv, history?: XapiDbHistory): Transport {
  return {
    name: 'xml',
    ...(history ? { history } : {}),
    tools: 'cli',
    async batch(calls) {
      const out: unknown[] = [];
      for (const c of calls) {
        const r = await callDriver(c.verb, request(ctx, c.verb, c.extra), ctx.env);
        t.is(r.code, 0, `${c.verb}: exit code 0`);
        t.is(r.signal, null);
        t.is(r.stdout.match(/<methodResponse>/g)?.length, 1, `${c.verb}: exactly one methodResponse on stdout`);
        t.true(r.stdout.startsWith('<?xml'), `${c.verb}: stdout holds nothing before the response`);
        t.true(r.stdout.trimEnd().endsWith('</methodResponse>'), `${c.verb}: stdout holds nothing after the response`);
        if (r.response.kind === 'fault') throw new SmFault(r.response.faultCode, r.response.faultString);
        out.push(r.response.value);
        await afterVerb(t, ctx, history, c);
      }
      return out;
    },
    close: async () => undefined,
  };
}

function jsonTransport(t: ExecutionContext, ctx: SmEnv): Transport {
  return {
    name: 'json',
    tools: 'lib',
    async batch(calls) {
      const { responses, run } = await callJson(ctx, calls);
      t.is(run.code, 0, 'FileSR --json exits 0');
      t.is(responses.length, calls.length, 'one response per request');
      return calls.map((c, i) => {
        const r = responses.find((x) => x.id === i + 1)!;
        t.is(r.jsonrpc, '2.0');
        if (r.error) throw new SmFault(r.error.code, `${c.verb}: ${r.error.message} ${r.error.data?.opterr}`);
        t.true('result' in r, `${c.verb}: a result member`);
        return r.result;
      });
    },
    close: async () => undefined,
  };
}

async function serveTransport(t: ExecutionContext, ctx: SmEnv, history?: XapiDbHistory): Promise<Transport> {
  const server = await startServer(ctx);
  return {
    name: 'serve',
    tools: 'lib',
    ...(history ? { history } : {}),
    async batch(calls) {
      const out: unknown[] = [];
      for (const c of calls) {
        out.push(await server.call(c.verb, c.extra));
        await afterVerb(t, ctx, history, c);
      }
      return out;
    },
    close: () => server.stop(),
  };
}

/** nil over XML-RPC, null over JSON-RPC. */
const NIL = null;

async function exportAndCompare(t: ExecutionContext, ctx: SmEnv, tools: 'cli' | 'lib', uuid: string, model: SparseDisk, what: string): Promise<void> {
  const raw = ctx.scratch(`${uuid}.raw`);
  if (tools === 'cli') {
    const r = await smVhd(['export', '-n', imagePath(ctx, uuid), '-o', raw]);
    t.is(r.code, 0, `sm-vhd export ${what}: ${r.stderr}`);
  } else await exportRaw(imagePath(ctx, uuid), raw);
  const bytes = fs.readFileSync(raw);
  t.is(bytes.length, model.size, `${what}: exported size`);
  t.true(bytes.equals(model.raw()), `${what}: exported data identical to the model`);
  fs.rmSync(raw);
}

async function checkImage(t: ExecutionContext, ctx: SmEnv, tools: 'cli' | 'lib', uuid: string): Promise<void> {
  if (tools === 'lib') {
    const reports = await checkChain(imagePath(ctx, uuid), { parents: true });
    t.deepEqual(reports.flatMap((r) => r.problems), [], `check -p ${uuid}`);
    return;
  }
  const r = await smVhd(['check', '-n', imagePath(ctx, uuid), '-p']);
  t.is(r.code, 0, `sm-vhd check -p ${uuid}: ${r.stdout}${r.stderr}`);
  t.regex(r.stdout, /is valid/);
  t.notRegex(r.stdout, /invalid/);
}

async function lifecycle(t: ExecutionContext, ctx: SmEnv, tr: Transport): Promise<void> {
  const models = new Map<string, SparseDisk>();
  // The ref xapi holds for the VDI when there is one (the stand-in), else one a toolstack might send.
  const vdi = (uuid: string) => ({ vdi_uuid: uuid, vdi_location: uuid, vdi_ref: tr.history?.refOf(uuid) ?? `OpaqueRef:vdi-${uuid.slice(0, 8)}` });
  const write = async (uuid: string, offset: number, data: Buffer) => {
    await writeVdi(ctx, uuid, offset, data, tr.tools);
    models.get(uuid)!.write(offset, data);
    tr.history?.wrote(uuid);
  };

  // --- SR: driver info, create, attach
  const [info, created, attached] = await tr.batch([
    { verb: 'sr_get_driver_info' },
    { verb: 'sr_create', extra: { args: [String(10 * 1024 * MiB)], sr_sm_config: { name_label: `lifecycle-${tr.name}` } } },
    { verb: 'sr_attach' },
  ]);
  const i = info as Record<string, unknown>;
  t.deepEqual(Object.keys(i), ['name', 'description', 'vendor', 'copyright', 'driver_version', 'required_api_version', 'capabilities', 'configuration']);
  for (const k of ['name', 'description', 'vendor', 'copyright', 'driver_version', 'required_api_version']) t.is(typeof i[k], 'string', k);
  t.true(Array.isArray(i.capabilities) && (i.capabilities as unknown[]).every((c) => typeof c === 'string'));
  for (const cap of ['SR_CREATE', 'SR_DELETE', 'SR_ATTACH', 'SR_DETACH', 'SR_SCAN', 'VDI_CREATE', 'VDI_DELETE', 'VDI_ATTACH', 'VDI_DETACH', 'VDI_SNAPSHOT', 'VDI_CLONE', 'VDI_RESIZE']) {
    t.true((i.capabilities as string[]).includes(cap), `capability ${cap}`);
  }
  t.true(Array.isArray(i.configuration));
  for (const c of i.configuration as Record<string, unknown>[]) t.deepEqual(Object.keys(c).sort(), ['description', 'key']);
  t.true((i.configuration as { key: string }[]).some((c) => c.key === 'location'));
  t.is(created, NIL);
  t.is(attached, NIL);
  const record = path.join(ctx.root, 'run', 'sm', 'sr', `${ctx.sr}.json`);
  t.true(fs.existsSync(record), 'the attach record exists');
  t.is(JSON.parse(fs.readFileSync(record, 'utf8')).sr_uuid, ctx.sr);
  t.is(fs.realpathSync(ctx.mount), fs.realpathSync(ctx.location), 'run/sr-mount/<sr> reaches the location');

  // --- VDI: create and write
  const [v] = (await tr.batch([{ verb: 'vdi_create', extra: { args: createArgs(16 * MiB, 'lifecycle disk'), vdi_type: 'user' } }])) as Array<{ uuid: string; location: string }>;
  t.deepEqual(Object.keys(v).sort(), ['location', 'uuid']);
  t.regex(v.uuid, UUID_RE);
  t.is(typeof v.location, 'string');
  const V = v.uuid;
  models.set(V, new SparseDisk(16 * MiB));
  t.true(fs.existsSync(imagePath(ctx, V)));
  const w1 = pattern(1, 3 * MiB + 777);
  await write(V, 1000, w1);
  await exportAndCompare(t, ctx, tr.tools, V, models.get(V)!, 'V after the first write');

  // --- snapshot and clone
  const [s, c] = (await tr.batch([
    { verb: 'vdi_snapshot', extra: vdi(V) },
    { verb: 'vdi_clone', extra: vdi(V) },
  ])) as Array<{ uuid: string; location: string }>;
  for (const r of [s, c]) {
    t.deepEqual(Object.keys(r).sort(), ['location', 'uuid']);
    t.regex(r.uuid, UUID_RE);
  }
  const S = s.uuid;
  const C = c.uuid;
  t.not(S, V);
  t.not(C, V);
  models.set(S, models.get(V)!.copy());
  models.set(C, models.get(V)!.copy());
  let nodes = await readTree(ctx);
  const vNode = nodes.get(V)!;
  t.truthy(vNode, 'the original uuid still names an image');
  t.false(vNode.hidden, 'the original uuid is the visible leaf');
  t.deepEqual(vNode.children, [], 'the original uuid is a leaf');
  t.truthy(vNode.parent);
  t.true(nodes.get(vNode.parent!)!.hidden, 'its parent is a hidden base copy');
  t.true(nodes.get(nodes.get(S)!.parent!)!.hidden, "the snapshot's parent is a hidden base copy");
  t.false(nodes.get(S)!.hidden);
  const meta = readMetadata(ctx);
  t.true(meta.vdis[S].is_a_snapshot);
  t.is(meta.vdis[S].snapshot_of, V);
  t.false(meta.vdis[C].is_a_snapshot);
  t.false(meta.vdis[vNode.parent!].managed, 'the base copy is not offered to users');
  for (const u of [V, S, C]) await exportAndCompare(t, ctx, tr.tools, u, models.get(u)!, `${u} right after snapshot/clone`);

  // --- more writes: the VDI and its clone diverge, the snapshot keeps its data
  const w2 = pattern(2, 2 * MiB);
  const w3 = pattern(3, 5 * MiB + 3);
  await write(V, 2 * MiB - 512, w2);
  await write(C, 9 * MiB, w3);

  // --- attach / activate / deactivate / detach, then grow
  const [att, act, deact, det, resized] = await tr.batch([
    { verb: 'vdi_attach', extra: { ...vdi(V), args: ['true'] } },
    { verb: 'vdi_activate', extra: { ...vdi(V), args: ['true'] } },
    { verb: 'vdi_deactivate', extra: vdi(V) },
    { verb: 'vdi_detach', extra: vdi(V) },
    { verb: 'vdi_resize', extra: { ...vdi(V), args: [String(32 * MiB)] } },
  ]);
  const a = att as Record<string, unknown>;
  t.deepEqual(Object.keys(a).sort(), ['o_direct', 'o_direct_reason', 'params', 'params_nbd', 'xenstore_data']);
  t.is(typeof a.params, 'string');
  // Read and written through the datapath, never through the image (no nbd module on this host: the socket itself).
  const socket = path.join(ctx.root, 'run', 'blktap-control', 'nbd', ctx.sr, V);
  t.is(a.params, socket, 'params is the VDI\'s NBD socket');
  t.is(a.params_nbd, `nbd:unix:${socket}:exportname=${V}`, 'params_nbd in the established form');
  t.true(fs.readFileSync(ctx.smlog, 'utf8').includes(`VDI ${V}: no kernel NBD device (no /dev/nbd0 (nbd module not loaded)); params is the NBD socket path`), 'SMlog says why params is the socket');
  t.is(typeof a.o_direct, 'boolean');
  t.is(typeof a.o_direct_reason, 'string');
  t.is(typeof a.xenstore_data, 'object');
  t.is(act, NIL);
  t.is(deact, NIL);
  t.is(det, NIL);
  t.deepEqual(resized, { uuid: V, location: V });
  models.get(V)!.grow(32 * MiB);
  t.is((await readTree(ctx)).get(V)!.virtualSize, 32 * MiB);
  const w4 = pattern(4, 4 * MiB);
  await write(V, 27 * MiB, w4);
  for (const u of [V, S, C]) await exportAndCompare(t, ctx, tr.tools, u, models.get(u)!, `${u} after writes and the resize`);

  // --- delete the clone, scan
  const [del, scan] = await tr.batch([{ verb: 'vdi_delete', extra: vdi(C) }, { verb: 'sr_scan' }]);
  models.delete(C);
  t.is(del, NIL);
  t.false(fs.existsSync(imagePath(ctx, C)), 'the deleted leaf is gone');
  nodes = await readTree(ctx);
  if (tr.name === 'xml') t.is(scan, NIL, 'sr_scan answers nil over XML-RPC');
  else {
    const records = scan as Array<Record<string, unknown>>;
    t.true(Array.isArray(records), 'sr_scan returns the VDI records over JSON-RPC');
    t.deepEqual(records.map((r) => r.uuid).sort(), [...nodes.keys()].sort(), 'one record per image');
    for (const r of records) {
      const n = nodes.get(r.uuid as string)!;
      t.is(r.location, n.uuid);
      t.is(r.hidden, n.hidden);
      t.is(r.virtual_size, n.virtualSize);
      t.is(r.parent, n.parent ?? '');
      t.is(r.managed, !n.hidden);
    }
    t.deepEqual(records.filter((r) => !r.hidden).map((r) => r.uuid).sort(), [V, S].sort());
  }

  // --- detach and attach again; everything still reads as the model
  const [d1, a1, s1] = await tr.batch([{ verb: 'sr_detach' }, { verb: 'sr_attach' }, { verb: 'sr_scan' }]);
  t.is(d1, NIL);
  t.is(a1, NIL);
  if (tr.name === 'xml') t.is(s1, NIL);
  t.true(fs.existsSync(record));
  t.is(fs.realpathSync(ctx.mount), fs.realpathSync(ctx.location));
  for (const u of [V, S]) {
    await exportAndCompare(t, ctx, tr.tools, u, models.get(u)!, `${u} after detach/attach`);
    await checkImage(t, ctx, tr.tools, u);
  }
  const meta2 = readMetadata(ctx);
  t.is(meta2.name_label, `lifecycle-${tr.name}`);
  t.deepEqual(Object.keys(meta2.vdis).sort(), [...(await readTree(ctx)).keys()].sort(), 'after a scan every image has a record');

  // --- delete everything, then the SR
  const results = await tr.batch([{ verb: 'vdi_delete', extra: vdi(V) }, { verb: 'vdi_delete', extra: vdi(S) }, { verb: 'sr_detach' }, { verb: 'sr_delete' }]);
  t.deepEqual(results, [NIL, NIL, NIL, NIL]);
  t.false(fs.existsSync(ctx.location), 'sr_delete removed the SR directory');
  t.false(fs.existsSync(record), 'no attach record is left');
  t.false(fs.existsSync(ctx.mount), 'no sr-mount link is left');
}

const variants = [
  { name: 'xml', xapi: false },
  { name: 'json', xapi: false },
  { name: 'serve', xapi: false },
  { name: 'xml', xapi: true },
  { name: 'serve', xapi: true },
] as const;

for (const { name, xapi } of variants) {
  const over = name === 'xml' ? 'argv XML-RPC' : name === 'json' ? '--json' : '--serve';
  test(`lifecycle over ${over}${xapi ? ', the database kept in step with the stand-in xapi' : ''}`, async (t) => {
    const ctx = await makeSmEnv();
    let standin: XapiStandin | undefined;
    let tr: Transport | undefined;
    try {
      standin = xapi ? await startStandinFor(ctx) : undefined;
      const history = standin && new XapiDbHistory(ctx, standin, { srRef: SR_REF, hostRef: HOST_REF });
      tr = name === 'xml' ? xmlTransport(t, ctx, history) : name === 'json' ? jsonTransport(t, ctx) : await serveTransport(t, ctx, history);
      await lifecycle(t, ctx, tr);
    } finally {
      await tr?.close();
      await standin?.close();
      await ctx.cleanup();
    }
  });
}
