// The driver executable hands a call to the driver's resident server when one of
// the same build, with the same settings, listens at $SM_ROOT/run/sm/serve/FileSR.sock,
// and answers it itself otherwise; the toolstack sees the same answer either way.
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { parseMethodResponse } from '../../lib/smapi/index.js';
import { callDriver, createArgs, makeSmEnv, readSmlog, REPO, request, residentSocket, run, FILE_SR, startServer, type SmEnv } from '../helpers/sm.js';
import { encodeMethodCall } from '../../lib/smapi/index.js';

/** pids that logged `<verb> done` in SMlog, oldest first. */
function donePids(ctx: SmEnv, verb: string): number[] {
  return [...readSmlog(ctx).matchAll(new RegExp(`SM: \\[(\\d+)\\] ${verb} done`, 'g'))].map((m) => Number(m[1]));
}

async function withSr<T>(fn: (ctx: SmEnv) => Promise<T>): Promise<T> {
  const ctx = await makeSmEnv();
  try {
    await callDriver('sr_create', request(ctx, 'sr_create', { args: ['0'] }), ctx.env);
    await callDriver('sr_attach', request(ctx, 'sr_attach'), ctx.env);
    return await fn(ctx);
  } finally {
    await ctx.cleanup();
  }
}

test('with the resident server running, calls are answered by it, with the same replies as without it', async (t) => {
  await withSr(async (ctx) => {
    const info = (await callDriver('sr_get_driver_info', request(ctx, 'sr_get_driver_info'), ctx.env)).stdout;
    const created = await callDriver('vdi_create', request(ctx, 'vdi_create', { args: createArgs(4 << 20, 'alone') }), ctx.env);
    t.is(created.response.kind, 'result');
    const server = await startServer(ctx, ctx.env, residentSocket(ctx));
    try {
      t.is((await callDriver('sr_get_driver_info', request(ctx, 'sr_get_driver_info'), ctx.env)).stdout, info, 'byte for byte the same reply');
      const served = await callDriver('vdi_create', request(ctx, 'vdi_create', { args: createArgs(4 << 20, 'served') }), ctx.env);
      t.is(served.code, 0);
      t.is(served.response.kind, 'result');
      const fault = await callDriver('vdi_delete', request(ctx, 'vdi_delete', { vdi_uuid: '6b1f0000-0000-4000-8000-000000000000' }), ctx.env);
      t.is(fault.response.kind === 'fault' && fault.response.faultCode, 144, 'a fault is relayed as the fault (VDI unknown)');
      t.deepEqual(donePids(ctx, 'vdi_create').slice(-1), [server.pid], 'SMlog: the server did the work');
      t.is(donePids(ctx, 'sr_get_driver_info').at(-1), server.pid);
      const scan = await callDriver('sr_scan', request(ctx, 'sr_scan'), ctx.env);
      t.is(scan.response.kind, 'result');
    } finally {
      await server.stop();
    }
  });
});

test('a call with other settings than the server, or to a server of another build, is answered in-process', async (t) => {
  await withSr(async (ctx) => {
    const server = await startServer(ctx, ctx.env, residentSocket(ctx));
    try {
      const other = { ...ctx.env, SM_LOCK_TIMEOUT_MS: '5000' };
      const r = await callDriver('vdi_create', request(ctx, 'vdi_create', { args: createArgs(4 << 20, 'mine') }), other);
      t.is(r.response.kind, 'result');
      t.not(donePids(ctx, 'vdi_create').at(-1), server.pid, 'not the server: its settings differ');
      t.regex(readSmlog(ctx), /hand-off refused: other settings \(SM_LOCK_TIMEOUT_MS\)/);
    } finally {
      await server.stop();
    }
    // The unbundled entry is another build than the bundle the executable loads.
    const unbundled = path.join(REPO, 'dist', 'drivers', 'file-sr-main.js');
    const otherBuild = await startServer(ctx, ctx.env, residentSocket(ctx), unbundled);
    try {
      const r = await callDriver('vdi_create', request(ctx, 'vdi_create', { args: createArgs(4 << 20, 'other build') }), ctx.env);
      t.is(r.response.kind, 'result');
      t.not(donePids(ctx, 'vdi_create').at(-1), otherBuild.pid);
    } finally {
      await otherBuild.stop();
    }
  });
});

test('a socket left by a killed server, or no server at all, changes nothing: the executable answers', async (t) => {
  await withSr(async (ctx) => {
    const server = await startServer(ctx, ctx.env, residentSocket(ctx));
    process.kill(server.pid, 'SIGKILL');
    await server.stop();
    t.true(fs.existsSync(residentSocket(ctx)), 'the dead server left its socket file');
    const r = await callDriver('vdi_create', request(ctx, 'vdi_create', { args: createArgs(4 << 20, 'after') }), ctx.env);
    t.is(r.response.kind, 'result');
    fs.rmSync(residentSocket(ctx));
    t.is((await callDriver('sr_scan', request(ctx, 'sr_scan'), ctx.env)).response.kind, 'result');
  });
});

test('a server that dies during a handed-off call gives a fault saying so; the call is never run twice', async (t) => {
  await withSr(async (ctx) => {
    const server = await startServer(ctx, ctx.env, residentSocket(ctx));
    process.kill(server.pid, 'SIGSTOP'); // the kernel still accepts the connection and the request
    const xmlCall = encodeMethodCall('vdi_create', [request(ctx, 'vdi_create', { args: createArgs(4 << 20, 'lost') })]);
    const call = run(FILE_SR, [xmlCall], { env: ctx.env, timeoutMs: 60_000 });
    await new Promise((r) => setTimeout(r, 1500));
    process.kill(server.pid, 'SIGKILL');
    const r = await call;
    await server.stop();
    t.is(r.code, 0);
    const response = parseMethodResponse(r.stdout);
    t.is(response.kind, 'fault');
    if (response.kind === 'fault') {
      t.is(response.faultCode, 1200);
      t.regex(response.faultString, /the server ended during the call/);
    }
    t.false(readSmlog(ctx).includes('"lost"'), 'nobody ran the call');
  });
});
