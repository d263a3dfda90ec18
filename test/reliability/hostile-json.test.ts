// Hostile JSON-RPC through the real FileSR executable, via `--json` (stdin)
// and via `--serve <socket>`: invalid JSON, every request field of the wrong
// type, batches of garbage, huge and deep documents. Each gets the documented
// code (JSON-RPC codes for the envelope, BadRequest 143 for a field, the SM
// code of the verb otherwise), within 10 s and a bounded peak RSS; nothing on
// disk changes; the server survives it all and still answers a valid call.
import net from 'node:net';
import test from 'ava';
import { MiB } from '../helpers/model.js';
import { createAttachedSr, FILE_SR, makeSmEnv, request, run, SESSION_SECRET, startServer, withServer, watchPeakRss, type JsonRpcResponse, type SmEnv } from '../helpers/sm.js';
import { assertNotInLog } from '../helpers/hostile.js';
import { diskState } from '../helpers/sr-state.js';
import { seeded, soak, Tally, within } from '../helpers/tally.js';

const UNKNOWN = '0b5e7e4a-1c2d-4e5f-8a9b-0c1d2e3f4a5b';
const CHAP_SECRET = 'chap-SECRET-61d2';

/** A call that faults (144/46: no such VDI) if it gets as far as the verb: it can change nothing. */
function harmless(ctx: SmEnv, over: Record<string, unknown> = {}, id: unknown = 1): Record<string, unknown> {
  const params = { ...request(ctx, 'vdi_delete', { vdi_uuid: UNKNOWN, vdi_location: UNKNOWN, device_config: { chappassword: CHAP_SECRET } }), ...over };
  return { jsonrpc: '2.0', id, method: 'vdi_delete', params };
}

const STRING_FIELDS = ['host_ref', 'session_ref', 'command', 'sr_uuid', 'sr_ref', 'vdi_uuid', 'vdi_location', 'vdi_ref', 'vdi_type', 'new_uuid', 'subtask_of', 'vdi_on_boot', 'vdi_allow_caching', 'local_cache_sr'];
const MAP_FIELDS = ['device_config', 'sr_sm_config', 'vdi_sm_config', 'driver_params'];
const WRONG: unknown[] = [42, -1.5, true, [], ['a'], {}, { a: 1 }, 'text', [null]];

/** Every field with every value of the wrong type: BadRequest naming the field. */
function wrongTypes(ctx: SmEnv): Array<{ what: string; body: Record<string, unknown> }> {
  const out: Array<{ what: string; body: Record<string, unknown> }> = [];
  const add = (field: string, value: unknown) => out.push({ what: `${field}=${JSON.stringify(value)}`, body: harmless(ctx, { [field]: value }, out.length + 1) });
  for (const f of STRING_FIELDS) for (const v of WRONG) if (typeof v !== 'string') add(f, v);
  for (const f of MAP_FIELDS) for (const v of WRONG) if (!(typeof v === 'object' && v !== null && !Array.isArray(v) && Object.keys(v).length === 0)) add(f, v);
  for (const v of WRONG) if (!(Array.isArray(v) && v.every((e) => typeof e === 'string'))) add('args', v);
  // nil for a required field (command may be nil: it defaults to the method).
  for (const f of ['host_ref', 'args', 'device_config']) add(f, null);
  return out;
}

async function viaStdin(ctx: SmEnv, input: string | Buffer) {
  const r = await run(FILE_SR, ['--json'], { env: ctx.env, input, measure: true, timeoutMs: 30_000 });
  let parsed: unknown;
  try {
    parsed = JSON.parse(r.stdout);
  } catch {
    parsed = undefined;
  }
  return { r, parsed };
}

/** The code of an answer; for a batch answer, of its first member (a deep document is a batch of one). */
const codeOf = (x: unknown): number | undefined => (Array.isArray(x) ? codeOf(x[0]) : (x as JsonRpcResponse | undefined)?.error?.code);

test('--json: invalid, mistyped, garbage batches, huge and deep input', async (t) => {
  const ctx = await makeSmEnv();
  const tally = new Tally('JSON-RPC --json (FileSR)');
  try {
    await withServer(ctx, createAttachedSr);
    const before = diskState(ctx);
    const rnd = seeded(23);
    const big = (n: number) => 'S'.repeat(n);
    const deep = (n: number) => '['.repeat(n) + ']'.repeat(n);
    const single: Array<{ what: string; input: string | Buffer; codes: Array<number | undefined> }> = [
      { what: 'empty input', input: '', codes: [-32700] },
      { what: 'truncated object', input: JSON.stringify(harmless(ctx)).slice(0, 50), codes: [-32700] },
      { what: 'bare word', input: 'nul', codes: [-32700] },
      { what: 'NUL bytes', input: '\u0000\u0000', codes: [-32700] },
      { what: 'invalid UTF-8', input: Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), codes: [-32700] },
      { what: 'random bytes', input: Buffer.from(Array.from({ length: 3000 }, () => Math.floor(rnd() * 256))), codes: [-32700] },
      { what: 'a number', input: '42', codes: [-32600] },
      { what: 'jsonrpc 1.0', input: JSON.stringify({ ...harmless(ctx), jsonrpc: '1.0' }), codes: [-32600] },
      { what: 'method a number', input: JSON.stringify({ ...harmless(ctx), method: 42 }), codes: [-32600] },
      { what: 'id an object', input: JSON.stringify({ ...harmless(ctx), id: { a: 1 } }), codes: [-32600] },
      { what: 'params an array', input: JSON.stringify({ ...harmless(ctx), params: [1] }), codes: [-32602] },
      { what: 'params a string', input: JSON.stringify({ ...harmless(ctx), params: 'x' }), codes: [-32602] },
      { what: 'unknown method', input: JSON.stringify({ ...harmless(ctx), method: '__proto__' }), codes: [38] },
      { what: 'empty batch', input: '[]', codes: [-32600] },
      { what: 'a 64 MiB string', input: JSON.stringify(harmless(ctx, { session_ref: big(64 * MiB) })), codes: [-32600] },
      { what: 'a 15 MiB string', input: JSON.stringify(harmless(ctx, { subtask_of: big(15 * MiB) })), codes: [144, 46] },
      { what: 'a million-element args', input: JSON.stringify(harmless(ctx, { args: new Array(1_000_000).fill('0') })), codes: [144, 46] },
      { what: 'a 100k-element array of ints in args', input: JSON.stringify(harmless(ctx, { args: new Array(100_000).fill(0) })), codes: [143] },
      { what: '100k nested arrays in args', input: JSON.stringify(harmless(ctx)).replace('"args":[]', `"args":${deep(100_000)}`), codes: [-32600] },
      { what: '100k nested objects in device_config', input: JSON.stringify(harmless(ctx)).replace('"device_config":{', `"device_config":{"x":${'{"a":'.repeat(100_000)}1${'}'.repeat(100_000)},`), codes: [-32600] },
      { what: `${soak ? '5M' : '200k'} nested arrays as the document`, input: deep(soak ? 5_000_000 : 200_000), codes: [-32600, -32700] },
    ];
    for (const c of single) {
      const { r, parsed } = await viaStdin(ctx, c.input);
      const right = r.code === 0 && c.codes.includes(codeOf(parsed));
      t.true(right, `${c.what}: exit ${r.code} ${r.signal ?? ''}, ${r.stdout.slice(0, 200)} ${r.stderr.slice(-300)}`);
      t.false(r.stdout.includes(SESSION_SECRET) || r.stderr.includes(SESSION_SECRET) || r.stdout.includes(CHAP_SECRET), `${c.what}: no secret in the output`);
      within(t, tally, c.what, right, r);
    }

    // Every field of the wrong type, and a batch of garbage, each as one batch: one answer per member, in order.
    const typed = wrongTypes(ctx);
    const garbage = [1, 'x', null, {}, [], true, { jsonrpc: '2.0' }, { jsonrpc: '2.0', id: 9, method: 'sr_scan', params: 7 }];
    const batches: Array<{ what: string; members: unknown[]; codes: number[][] }> = [
      { what: `${typed.length} mistyped fields`, members: typed.map((c) => c.body), codes: typed.map(() => [143]) },
      { what: 'a batch of garbage', members: garbage, codes: [...garbage.slice(0, -1).map(() => [-32600]), [-32602]] },
    ];
    for (const b of batches) {
      const { r, parsed } = await viaStdin(ctx, JSON.stringify(b.members));
      const answers = Array.isArray(parsed) ? (parsed as JsonRpcResponse[]) : [];
      t.is(answers.length, b.members.length, `${b.what}: one answer per member`);
      let right = answers.length === b.members.length;
      answers.forEach((a, i) => {
        const ok = b.codes[i]!.includes(a.error?.code ?? 0);
        right &&= ok;
        t.true(ok, `${b.what} #${i} ${typed[i]?.what ?? JSON.stringify(b.members[i])}: ${JSON.stringify(a).slice(0, 200)}`);
      });
      within(t, tally, b.what, right, r);
      tally.cases += b.members.length - 1;
      if (right) tally.rightCode += b.members.length - 1;
    }
    t.deepEqual(diskState(ctx), before, 'nothing on disk changed');
    assertNotInLog(t, ctx, [SESSION_SECRET, CHAP_SECRET], tally);
    tally.report(t);
  } finally {
    await ctx.cleanup();
  }
});

/** Writes raw lines on one connection; collects answer lines until `want` arrived or the server closed it. */
function exchange(socket: string, payload: string | Buffer, want: number): Promise<{ lines: string[]; closed: boolean; ms: number }> {
  const started = Date.now();
  return new Promise((resolve) => {
    const c = net.connect(socket);
    const lines: string[] = [];
    let buffer = '';
    const done = (closed: boolean) => {
      c.destroy();
      resolve({ lines, closed, ms: Date.now() - started });
    };
    c.setEncoding('utf8');
    c.on('data', (chunk: string) => {
      buffer += chunk;
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        lines.push(buffer.slice(0, nl));
        buffer = buffer.slice(nl + 1);
      }
      if (lines.length >= want) done(false);
    });
    c.on('error', () => undefined);
    c.on('close', () => done(true));
    c.write(payload);
  });
}

test('--serve: garbage, huge and deep lines are answered or cut off; the server lives on and answers a valid call', async (t) => {
  const ctx = await makeSmEnv();
  const tally = new Tally('JSON-RPC --serve (FileSR)');
  const server = await startServer(ctx);
  const rss = watchPeakRss(server.pid);
  try {
    await createAttachedSr(server);
    const before = diskState(ctx);
    const line = (x: unknown) => JSON.stringify(x) + '\n';
    const cases: Array<{ what: string; payload: string | Buffer; codes: number[]; closes?: boolean }> = [
      { what: 'not JSON', payload: '{oops\n', codes: [-32700] },
      { what: 'invalid UTF-8', payload: Buffer.from([0x7b, 0xc3, 0x28, 0x7d, 0x0a]), codes: [-32700] },
      { what: 'NUL bytes', payload: '\u0000\u0000\n', codes: [-32700] },
      { what: 'a bare number', payload: '7\n', codes: [-32600] },
      { what: 'empty batch', payload: '[]\n', codes: [-32600] },
      { what: 'mistyped host_ref', payload: line(harmless(ctx, { host_ref: 3 })), codes: [143] },
      { what: 'mistyped args', payload: line(harmless(ctx, { args: { a: 1 } })), codes: [143] },
      { what: 'unknown method', payload: line({ ...harmless(ctx), method: 'constructor' }), codes: [38] },
      { what: '100k nested arrays', payload: '['.repeat(100_000) + ']'.repeat(100_000) + '\n', codes: [-32600] },
      { what: '100k nested arrays in args', payload: line(harmless(ctx)).replace('"args":[]', `"args":${'['.repeat(100_000)}${']'.repeat(100_000)}`), codes: [-32600] },
      { what: 'a million-element args', payload: line(harmless(ctx, { args: new Array(1_000_000).fill('0') })), codes: [144, 46] },
      { what: 'a 17 MiB line (over the bound)', payload: line(harmless(ctx, { subtask_of: 'S'.repeat(17 * MiB) })), codes: [-32600], closes: true },
      { what: 'an endless line (32 MiB, no newline)', payload: 'A'.repeat(32 * MiB), codes: [-32600], closes: true },
    ];
    for (const c of cases) {
      const r = await exchange(server.socket, c.payload, c.closes ? Infinity : 1);
      const right = c.codes.includes(codeOf(r.lines[0] === undefined ? undefined : JSON.parse(r.lines[0])) ?? 0) && (!c.closes || r.closed);
      t.true(right, `${c.what}: ${JSON.stringify(r).slice(0, 300)}`);
      within(t, tally, c.what, right, { ms: r.ms });
    }
    // Still alive and well: a valid call on a fresh connection.
    const info = (await server.call('sr_get_driver_info')) as { name?: string };
    t.is(typeof info.name, 'string', 'the server answers a valid call afterwards');
    const peak = rss.stop();
    tally.maxRssKiB = peak;
    t.true(peak < 384 * 1024, `server peak RSS ${peak} KiB`);
    t.deepEqual(diskState(ctx), before, 'nothing on disk changed');
    tally.report(t);
  } finally {
    rss.stop();
    await server.stop();
    await ctx.cleanup();
  }
});

