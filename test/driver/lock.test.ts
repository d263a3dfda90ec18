// The SR lock between processes: concurrent verbs from separate driver
// processes never interleave (the tree and metadata stay consistent, every call
// succeeds or fails with LockErr 37), a held lock makes a call wait and then
// fail with 37 without touching anything, and a holder killed with SIGKILL
// never leaves the SR locked.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { MiB, pattern, SparseDisk } from '../helpers/model.js';
import {
  callDriver,
  createAttachedSr,
  createVdi,
  makeSmEnv,
  request,
  withServer,
  type SmEnv,
  type XmlCallResult,
} from '../helpers/sm.js';
import { assertConsistent, readMetadata, readTree, snapshotDir, writeVdi } from '../helpers/sr-state.js';

const HOLD_LOCK = fileURLToPath(new URL('../helpers/hold-lock.js', import.meta.url));

async function holdLock(ctx: SmEnv, name = 'sr'): Promise<{ child: ChildProcess; release(): Promise<void>; kill(): Promise<void> }> {
  const child = spawn(process.execPath, [HOLD_LOCK, ctx.sr, name], { env: ctx.env, stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  const first = await new Promise<string>((resolve) => {
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('\n')) resolve(out.trim());
    });
  });
  if (!first.startsWith('held')) throw new Error(`lock holder: ${first}`);
  return {
    child,
    release: async () => {
      child.stdin!.end();
      await exited;
    },
    kill: async () => {
      child.kill('SIGKILL');
      await exited;
    },
  };
}

const snapshotCall = (ctx: SmEnv, vdi: string, env: NodeJS.ProcessEnv, verb = 'vdi_snapshot') =>
  callDriver(verb, request(ctx, verb, { vdi_uuid: vdi, vdi_location: vdi }), env);

function outcome(r: XmlCallResult): { uuid?: string; fault?: number } {
  if (r.code !== 0 || r.signal) throw new Error(`driver exit ${r.code} ${r.signal}: ${r.stderr}`);
  if (r.response.kind === 'fault') return { fault: r.response.faultCode };
  return { uuid: (r.response.value as { uuid: string }).uuid };
}

async function srWithVdi(ctx: SmEnv): Promise<{ vdi: string; model: SparseDisk }> {
  return withServer(ctx, async (s) => {
    await createAttachedSr(s);
    const vdi = await createVdi(s, 12 * MiB);
    const model = new SparseDisk(12 * MiB);
    const data = pattern(5, 5 * MiB + 4096);
    await writeVdi(ctx, vdi, 3 * MiB, data);
    model.write(3 * MiB, data);
    return { vdi, model };
  });
}

test('concurrent snapshots and clones from separate processes are serialized by the SR lock', async (t) => {
  const ctx = await makeSmEnv();
  try {
    const { vdi, model } = await srWithVdi(ctx);
    // Waiting callers: all must succeed, one after another.
    const verbs = ['vdi_snapshot', 'vdi_snapshot', 'vdi_clone', 'vdi_snapshot', 'vdi_clone', 'vdi_snapshot'];
    const results = (await Promise.all(verbs.map((verb) => snapshotCall(ctx, vdi, ctx.env, verb)))).map(outcome);
    t.deepEqual(results.filter((r) => r.fault !== undefined), [], 'with the default wait every call succeeds');
    // Callers that try the lock once: each succeeds or fails with LockErr (37), nothing else.
    const impatient = { ...ctx.env, SM_LOCK_TIMEOUT_MS: '0' };
    const tries = (await Promise.all(Array.from({ length: 6 }, () => snapshotCall(ctx, vdi, impatient)))).map(outcome);
    for (const r of tries) t.true(r.uuid !== undefined || r.fault === 37, `success or LockErr, got ${JSON.stringify(r)}`);
    t.true(tries.some((r) => r.uuid), 'at least one impatient caller got the lock');

    const made = [...results, ...tries].filter((r) => r.uuid).map((r) => r.uuid!);
    t.is(new Set(made).size, made.length, 'every call made its own VDI');
    const models = new Map([[vdi, model], ...made.map((u) => [u, model.copy()] as [string, SparseDisk])]);
    // Each snapshot or clone adds one base copy and one new leaf: nothing was lost or done twice.
    const nodes = await readTree(ctx);
    t.is(nodes.size, 1 + 2 * made.length);
    t.is([...nodes.values()].filter((n) => n.hidden).length, made.length);
    const meta = readMetadata(ctx);
    t.deepEqual(Object.keys(meta.vdis).sort(), [...nodes.keys()].sort(), 'one record per image: no metadata update was lost');
    for (const u of made) t.deepEqual(nodes.get(u)!.children, [], `${u} is a leaf`);
    await assertConsistent(t, ctx, models, { scanned: true });
  } finally {
    await ctx.cleanup();
  }
});

test('a held SR lock makes a verb wait, then fail with LockErr 37 without touching anything', async (t) => {
  const ctx = await makeSmEnv();
  try {
    const { vdi, model } = await srWithVdi(ctx);
    const holder = await holdLock(ctx);
    const state = () => snapshotDir(ctx.base, (rel) => rel === 'root/var/log/SMlog' || rel === 'root/var/lock');
    const before = state();
    const started = Date.now();
    const r = outcome(await snapshotCall(ctx, vdi, { ...ctx.env, SM_LOCK_TIMEOUT_MS: '700' }));
    t.is(r.fault, 37);
    t.true(Date.now() - started >= 700, 'it waited for the lock');
    t.deepEqual(state(), before, 'nothing changed');
    await holder.release();
    const after = outcome(await snapshotCall(ctx, vdi, { ...ctx.env, SM_LOCK_TIMEOUT_MS: '0' }));
    t.truthy(after.uuid, 'once released, the lock is free at the first try');
    await assertConsistent(t, ctx, new Map([[vdi, model], [after.uuid!, model.copy()]]));
  } finally {
    await ctx.cleanup();
  }
});

test('a lock holder killed with SIGKILL never leaves the SR locked', async (t) => {
  const ctx = await makeSmEnv();
  try {
    const { vdi, model } = await srWithVdi(ctx);
    const impatient = { ...ctx.env, SM_LOCK_TIMEOUT_MS: '0' };

    // A driver killed mid-snapshot, holding the lock.
    const killed = await snapshotCall(ctx, vdi, { ...ctx.env, SM_FAULT: 'snapshot-renamed' });
    t.is(killed.signal, 'SIGKILL', 'the driver died by SIGKILL at the fault point');
    t.is(killed.stdout, '');
    const scan = await callDriver('sr_scan', request(ctx, 'sr_scan'), impatient);
    t.is(scan.response.kind, 'result', 'the next call gets the lock at its first try');
    await assertConsistent(t, ctx, new Map([[vdi, model]]), { scanned: true });

    // Any process holding it, killed.
    const holder = await holdLock(ctx);
    t.is(outcome(await snapshotCall(ctx, vdi, impatient)).fault, 37, 'held: refused at once');
    await holder.kill();
    const started = Date.now();
    const next = outcome(await snapshotCall(ctx, vdi, impatient));
    t.truthy(next.uuid, 'after the holder is killed the lock is free at once');
    t.true(Date.now() - started < 10_000);
    await assertConsistent(t, ctx, new Map([[vdi, model], [next.uuid!, model.copy()]]));
  } finally {
    await ctx.cleanup();
  }
});
