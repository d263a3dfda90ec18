// The NFS SR's device_config checks through the real NFSSR executable, on the
// host (no kernel NFS here): each bad config is a fault with the right SM code,
// and nothing is executed. Tools are spied on by putting recording stand-ins for
// mount, umount, showmount, rpcinfo, sh... first on PATH: any use is logged.
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { encodeMethodCall, parseMethodResponse } from '../../lib/smapi/index.js';
import { makeSmEnv, REPO, run, type SmEnv } from '../helpers/sm.js';
import { spyOn, type Spy } from '../helpers/spy.js';

const NFS_SR = path.join(REPO, 'drivers', 'NFSSR');

async function call(ctx: SmEnv, env: NodeJS.ProcessEnv, verb: string, dc: Record<string, string>, extra: Record<string, unknown> = {}) {
  const params = { host_ref: 'OpaqueRef:host-1', command: verb, args: verb === 'sr_create' ? ['0'] : [], sr_uuid: ctx.sr, ...extra, device_config: { SRmaster: 'true', ...dc } };
  const r = await run(NFS_SR, [encodeMethodCall(verb, [params])], { env, timeoutMs: 60_000 });
  return { ...r, response: parseMethodResponse(r.stdout) };
}

async function expectFault(t: ExecutionContext, ctx: SmEnv, spy: Spy, verb: string, dc: Record<string, string>, codes: number[], what: string): Promise<string> {
  const r = await call(ctx, spy.env, verb, dc);
  t.is(r.code, 0, `${what}: ${verb} exits 0`);
  t.is(r.signal, null);
  t.is(r.stdout.match(/<methodResponse>/g)?.length, 1, `${what}: one methodResponse on stdout`);
  if (r.response.kind !== 'fault') {
    t.fail(`${what}: ${verb} succeeded`);
    return '';
  }
  t.true(codes.includes(r.response.faultCode), `${what}: ${verb} fault ${r.response.faultCode} (${r.response.faultString}), expected ${codes.join('/')}`);
  return r.response.faultString;
}

const VERBS = ['sr_create', 'sr_attach', 'sr_probe'] as const;

test('missing server: 102 from every verb that needs it, nothing executed', async (t) => {
  const ctx = await makeSmEnv();
  const spy = spyOn(ctx);
  try {
    for (const verb of VERBS) await expectFault(t, ctx, spy, verb, { serverpath: '/export' }, [102], 'no server');
    for (const verb of VERBS) await expectFault(t, ctx, spy, verb, { server: '', serverpath: '/export' }, [102], 'empty server');
    t.deepEqual(spy.calls(), []);
  } finally {
    await ctx.cleanup();
  }
});

test('missing serverpath: 101 from sr_create and sr_attach, nothing executed', async (t) => {
  const ctx = await makeSmEnv();
  const spy = spyOn(ctx);
  try {
    for (const verb of ['sr_create', 'sr_attach', 'sr_delete']) {
      const s = await expectFault(t, ctx, spy, verb, { server: '192.0.2.1' }, [101], 'no serverpath');
      t.regex(s, /serverpath/);
    }
    t.deepEqual(spy.calls(), []);
    t.false(fs.existsSync(path.join(ctx.root, 'run', 'sr-mount', ctx.sr)), 'no mount point made');
  } finally {
    await ctx.cleanup();
  }
});

test('a bad nfsversion: 72 before anything runs', async (t) => {
  const ctx = await makeSmEnv();
  const spy = spyOn(ctx);
  try {
    for (const v of ['2', '5', '3.0x', 'four', '4;touch x']) {
      for (const verb of VERBS) {
        const s = await expectFault(t, ctx, spy, verb, { server: '192.0.2.1', serverpath: '/export', nfsversion: v }, [72], `nfsversion ${v}`);
        t.regex(s, /NFS version/);
      }
    }
    t.deepEqual(spy.calls(), []);
  } finally {
    await ctx.cleanup();
  }
});

test('shell metacharacters in server, serverpath or options: refused, nothing executed', async (t) => {
  const ctx = await makeSmEnv();
  const spy = spyOn(ctx);
  const touch = `touch ${spy.canary}`;
  try {
    const bad: Array<[Record<string, string>, number[]]> = [
      [{ server: `127.0.0.1;${touch}`, serverpath: '/export' }, [102]],
      [{ server: `$(${touch})`, serverpath: '/export' }, [102]],
      [{ server: `\`${touch}\``, serverpath: '/export' }, [102]],
      [{ server: `127.0.0.1 && ${touch}`, serverpath: '/export' }, [102]],
      [{ server: `-oProxyCommand=${touch}`, serverpath: '/export' }, [102]],
      [{ server: `127.0.0.1\n${touch}`, serverpath: '/export' }, [102]],
      [{ server: '127.0.0.1', serverpath: `/export\n${touch}` }, [101]],
      [{ server: '127.0.0.1', serverpath: 'relative/path' }, [101]],
      [{ server: '127.0.0.1', serverpath: '/export', options: `noatime;${touch}` }, [73]],
      [{ server: '127.0.0.1', serverpath: '/export', options: 'vers=2' }, [73]],
      [{ server: '127.0.0.1', serverpath: '/export', options: 'hard' }, [73]],
    ];
    for (const [dc, codes] of bad) {
      for (const verb of VERBS) {
        // probe without serverpath lists exports: give it one so the check is the same
        const s = await expectFault(t, ctx, spy, verb, dc, codes, JSON.stringify(dc));
        t.regex(s, /opterr=invalid /, `${verb}: says what is invalid`);
      }
    }
    // `;` and spaces are legal in a path and the path only ever travels as one argv
    // element: it passes the checks, and here fails at the reachability check (no nfsd).
    for (const verb of VERBS) await expectFault(t, ctx, spy, verb, { server: '127.0.0.1', serverpath: `/export;${touch}` }, [108], 'serverpath with ;');
    t.deepEqual(spy.calls(), [], 'no tool ran');
    t.false(fs.existsSync(spy.canary), 'the injected command did not run');
    t.false(fs.existsSync(path.join(ctx.root, 'run', 'sr-mount', ctx.sr)), 'no mount point made');
  } finally {
    await ctx.cleanup();
  }
});

test('an unreachable server: 108 quickly, before mount or showmount runs', async (t) => {
  const ctx = await makeSmEnv();
  const spy = spyOn(ctx);
  try {
    // 127.0.0.1 of the host tier has no NFS server (the host kernel has no nfsd)
    const started = Date.now();
    for (const verb of VERBS) await expectFault(t, ctx, spy, verb, { server: '127.0.0.1', serverpath: '/export' }, [108], 'nothing on port 2049');
    await expectFault(t, ctx, spy, 'sr_probe', { server: '127.0.0.1' }, [108], 'probe without serverpath');
    t.true(Date.now() - started < 20_000, `took ${Date.now() - started} ms`);
    t.deepEqual(spy.calls(), []);
    t.false(fs.existsSync(path.join(ctx.root, 'run', 'sr-mount', ctx.sr)), 'the mount point was removed');
    t.false(fs.existsSync(path.join(ctx.root, 'run', 'sr-mount', `${ctx.sr}.export`)), 'the scratch mount point was removed');
  } finally {
    await ctx.cleanup();
  }
});

test('sr_get_driver_info: the SMAPIv1 shape and the NFS configuration keys', async (t) => {
  const ctx = await makeSmEnv();
  try {
    const r = await call(ctx, ctx.env, 'sr_get_driver_info', {});
    t.is(r.code, 0);
    t.is(r.response.kind, 'result');
    const i = (r.response as { value: Record<string, unknown> }).value;
    t.deepEqual(Object.keys(i), ['name', 'description', 'vendor', 'copyright', 'driver_version', 'required_api_version', 'capabilities', 'configuration']);
    for (const k of ['name', 'description', 'vendor', 'copyright', 'driver_version', 'required_api_version']) t.is(typeof i[k], 'string', k);
    t.is(i.name, 'NFS VHD');
    const caps = i.capabilities as string[];
    t.true(Array.isArray(caps) && caps.every((c) => typeof c === 'string'));
    t.is(new Set(caps).size, caps.length, 'no capability twice');
    for (const cap of ['SR_PROBE', 'SR_CREATE', 'SR_DELETE', 'SR_ATTACH', 'SR_DETACH', 'SR_SCAN', 'SR_UPDATE', 'VDI_CREATE', 'VDI_DELETE', 'VDI_ATTACH', 'VDI_DETACH', 'VDI_ACTIVATE', 'VDI_DEACTIVATE', 'VDI_SNAPSHOT', 'VDI_CLONE', 'VDI_RESIZE', 'THIN_PROVISIONING']) {
      t.true(caps.includes(cap), `capability ${cap}`);
    }
    const config = i.configuration as Array<Record<string, unknown>>;
    for (const c of config) {
      t.deepEqual(Object.keys(c).sort(), ['description', 'key']);
      t.is(typeof c.description, 'string');
      t.true((c.description as string).length > 0);
    }
    t.deepEqual(config.map((c) => c.key), ['server', 'serverpath', 'nfsversion', 'options']);
    t.is(r.stdout.match(/<methodResponse>/g)?.length, 1);
  } finally {
    await ctx.cleanup();
  }
});
