// The `tapdisk-pause` host plugin run exactly as xapi runs a host plugin
// (`/etc/xapi.d/plugins/tapdisk-pause '<methodCall>'`, params [session, args])
// against a VDI this host serves, with NBD clients (qemu-io, a raw client)
// reading and writing: pause holds I/O without an error, unpause releases it,
// refresh reopens the chain after it changed under the open image.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { createDynamic, setParent, writeAt } from '../../lib/vhd/index.js';
import { encodeMethodCall, parseMethodResponse } from '../../lib/smapi/index.js';
import { MiB, pattern } from '../helpers/model.js';
import { readSmlog, REPO, run, sleep, type SmEnv } from '../helpers/sm.js';
import { openNbd, qemuIo } from '../helpers/nbd-vdi.js';
import { imagePath } from '../helpers/sr-state.js';
import { withWorld, type World } from '../helpers/world.js';

const PLUGIN = path.join(REPO, 'drivers', 'tapdisk-pause');
const HOLD_LOCK = fileURLToPath(new URL('../helpers/hold-lock.js', import.meta.url));
const vdiArgs = (vdi: string, extra: Record<string, unknown> = {}) => ({ vdi_uuid: vdi, vdi_location: vdi, ...extra });

interface PluginReply {
  Status: string;
  Value?: string;
  ErrorDescription?: string[];
}

/** One plugin call as xapi's host.call_plugin makes it on this host. */
async function callPlugin(t: ExecutionContext, ctx: SmEnv, fn: string, args: Record<string, string>): Promise<PluginReply> {
  const r = await run(PLUGIN, [encodeMethodCall(fn, ['OpaqueRef:session-of-the-master-call', args])], { env: ctx.env, timeoutMs: 60_000 });
  t.is(r.code, 0, `${fn}: exit 0 (${r.stderr})`);
  t.is(r.stdout.match(/<methodResponse>/g)?.length, 1, `${fn}: one methodResponse, nothing else on stdout`);
  const response = parseMethodResponse(r.stdout);
  if (response.kind !== 'result') throw new Error(`${fn}: fault ${response.faultString}`);
  return response.value as unknown as PluginReply;
}

const pauseArgs = (ctx: SmEnv, vdi: string, failfast = 'False') => ({ sr_uuid: ctx.sr, vdi_uuid: vdi, failfast });

async function activate(w: World, vdi: string): Promise<void> {
  await w.s.call('vdi_attach', vdiArgs(vdi, { args: ['true'] }));
  await w.s.call('vdi_activate', vdiArgs(vdi, { args: ['true'] }));
}

async function deactivate(w: World, vdi: string): Promise<void> {
  await w.s.call('vdi_deactivate', vdiArgs(vdi));
  await w.s.call('vdi_detach', vdiArgs(vdi));
}

test('pause holds a writing client without an error, a local verb meanwhile leaves it paused, unpause releases it', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 8 * MiB);
    await activate(w, V);
    t.deepEqual(await callPlugin(t, ctx, 'pause', pauseArgs(ctx, V)), { Status: 'Success', Value: 'True' });
    let done = false;
    const io = qemuIo(ctx, V, ['write -P 0x42 0 64k', 'read -P 0x42 0 64k']).finally(() => (done = true));
    await sleep(1500);
    t.false(done, 'the write is held while paused');
    // A verb of this host on the same SR must not take the pool's pause for a leftover and release it.
    await w.s.call('sr_update');
    await sleep(500);
    t.false(done, 'still held after a local verb on the SR');
    t.deepEqual(await callPlugin(t, ctx, 'unpause', pauseArgs(ctx, V)), { Status: 'Success', Value: 'True' });
    const r = await io;
    t.is(r.code, 0, r.stderr);
    t.notRegex(r.stdout + r.stderr, /error|fail/i, 'the client saw no error');
    w.models.get(V)!.write(0, Buffer.alloc(64 * 1024, 0x42));
    const log = readSmlog(ctx);
    t.regex(log, new RegExp(`tapdisk-pause pause: VDI ${V} paused`));
    t.regex(log, new RegExp(`tapdisk-pause unpause: VDI ${V} unpaused on \\S+${V}\\.vhd after \\d+ ms paused`));
    await deactivate(w, V);
    await w.check(t);
  });
});

test('refresh reopens the chain: a parent changed under the open leaf is read after the refresh', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 8 * MiB);
    await w.write('V', 0, pattern(1, MiB));
    await w.snapshot('V', 'S'); // V is now an empty leaf over a base holding pattern 1
    await activate(w, V);
    const c = await openNbd(ctx, V);
    t.true((await c.read(0, MiB)).equals(pattern(1, MiB)));
    // A new parent with other data, and V relinked onto it, as the GC relinks a leaf.
    const other = randomUUID();
    await createDynamic(imagePath(ctx, other), 8 * MiB);
    await writeAt(imagePath(ctx, other), pattern(2, MiB), 0);
    await setParent(imagePath(ctx, V), imagePath(ctx, other));
    t.true((await c.read(0, MiB)).equals(pattern(1, MiB)), 'before the refresh the datapath reads the chain it opened');
    t.deepEqual(await callPlugin(t, ctx, 'refresh', pauseArgs(ctx, V)), { Status: 'Success', Value: 'True' });
    t.true((await c.read(0, MiB)).equals(pattern(2, MiB)), 'the same connection reads the new parent after the refresh');
    await c.write(2 * MiB, pattern(3, 4096));
    await c.flush();
    c.close();
    t.regex(readSmlog(ctx), new RegExp(`tapdisk-pause refresh: VDI ${V} unpaused`));
    await deactivate(w, V);
  });
});

test('nothing served here is success; failfast with the VDI lock held fails at once; an unknown function is named', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 4 * MiB);
    for (const fn of ['pause', 'unpause', 'refresh']) {
      t.deepEqual(await callPlugin(t, ctx, fn, pauseArgs(ctx, V)), { Status: 'Success', Value: 'True' }, `${fn} of a VDI not served here`);
    }
    t.regex(readSmlog(ctx), new RegExp(`tapdisk-pause pause: VDI ${V} of SR ${ctx.sr} is not served here: nothing to do`));

    await activate(w, V);
    const holder = spawn(process.execPath, [HOLD_LOCK, V, 'vdi'], { env: ctx.env, stdio: ['pipe', 'pipe', 'inherit'] });
    const exited = new Promise<void>((r) => holder.on('exit', () => r()));
    const first = await new Promise<string>((resolve) => holder.stdout!.setEncoding('utf8').once('data', (d: string) => resolve(d.trim())));
    t.regex(first, /^held/);
    try {
      const started = Date.now();
      const r = await callPlugin(t, ctx, 'pause', pauseArgs(ctx, V, 'True'));
      t.is(r.Status, 'Failure');
      t.is(r.ErrorDescription?.[0], 'XENAPI_PLUGIN_FAILURE');
      t.is(r.ErrorDescription?.[1], 'pause');
      t.is(r.ErrorDescription?.[2], 'LockErr');
      t.true(Date.now() - started < 10_000, 'failfast does not wait for the lock');
      const io = await qemuIo(ctx, V, ['write -P 0x7 0 4k']);
      t.is(io.code, 0, 'not paused: I/O goes on');
    } finally {
      holder.stdin!.end();
      await exited;
    }
    t.deepEqual(await callPlugin(t, ctx, 'detach', pauseArgs(ctx, V)), { Status: 'Failure', ErrorDescription: ['UNKNOWN_XENAPI_PLUGIN_FUNCTION', 'detach'] });
    await deactivate(w, V);
    t.false(fs.existsSync(path.join(ctx.root, 'run', 'sm', 'pool-paused', ctx.sr, V)));
  });
});
