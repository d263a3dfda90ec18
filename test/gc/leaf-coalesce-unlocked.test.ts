// A leaf-coalesce copies without holding the SR lock: verbs issued while a
// rate-capped copy runs answer at once (a VM start must not wait for the GC),
// and a vdi_activate of the VDI being coalesced makes the collector abandon
// the swap, leaving the VDI exactly as it was.
import { spawn, type ChildProcess } from 'node:child_process';
import test from 'ava';
import { MiB } from '../helpers/model.js';
import { makeSmEnv, readSmlog, SM_GC, waitFor, type SmEnv } from '../helpers/sm.js';
import { depthOf, readTree } from '../helpers/sr-state.js';
import { World } from '../helpers/world.js';

const GiB = 1024 * MiB;
const VERB_LIMIT_MS = 2000;

/** V (1 GiB) alone under its base copy, with `data` bytes of its own to copy. */
async function leafCandidate(ctx: SmEnv, data: number): Promise<World> {
  const w = await World.open(ctx);
  await w.create('V', GiB);
  await w.fill('V', 0, 4 * MiB);
  await w.snapshot('V', 'S');
  await w.delete('S');
  await w.fill('V', 8 * MiB, data);
  return w;
}

function startGc(ctx: SmEnv, mibps: number): { proc: ChildProcess; exited: Promise<number | null> } {
  const proc = spawn(process.execPath, [SM_GC, '-u', ctx.sr, '-g'], { env: { ...ctx.env, SM_GC_MAX_MIBPS: String(mibps) }, stdio: 'ignore' });
  return { proc, exited: new Promise((r) => proc.once('exit', (code) => r(code))) };
}

const copying = (ctx: SmEnv) => (readSmlog(ctx).includes('Leaf-coalescing') ? true : undefined);
const copyDone = (ctx: SmEnv) => /Leaf-coalesce of \w+: copied/.test(readSmlog(ctx));

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

test('verbs issued during a rate-capped leaf-coalesce answer within 2 s; the leaf-coalesce then completes', async (t) => {
  t.timeout(180_000);
  const ctx = await makeSmEnv();
  const w = await leafCandidate(ctx, 256 * MiB);
  try {
    const gc = startGc(ctx, 32); // about 8 s of copying
    await waitFor('the copy to start', () => copying(ctx), 60_000);
    const waits: Record<string, number> = {};
    waits.vdi_create = await timed(() => w.create('U', 16 * MiB));
    const u = w.uuid('U');
    waits.vdi_attach = await timed(() => w.s.call('vdi_attach', { vdi_uuid: u, vdi_location: u, args: ['true'] }));
    waits.vdi_detach = await timed(() => w.s.call('vdi_detach', { vdi_uuid: u, vdi_location: u }));
    waits.sr_scan = await timed(() => w.scan());
    waits.vdi_snapshot = await timed(() => w.snapshot('U', 'US'));
    t.false(copyDone(ctx), 'the copy was still running when the verbs had answered');
    t.log(`verb times during the copy (ms): ${JSON.stringify(Object.fromEntries(Object.entries(waits).map(([k, v]) => [k, Math.round(v)])))}`);
    for (const [verb, ms] of Object.entries(waits)) t.true(ms < VERB_LIMIT_MS, `${verb} took ${Math.round(ms)} ms`);
    t.is(await gc.exited, 0);
    t.regex(readSmlog(ctx), /Leaf-coalesce done: \w+ is now one image shorter/);
    t.is(depthOf(await readTree(ctx), w.uuid('V')), 1, 'V is one image');
    await w.check(t);
  } finally {
    await w.close();
    await ctx.cleanup();
  }
});

test('vdi_activate of the VDI being leaf-coalesced answers at once, and the collector abandons the swap', async (t) => {
  t.timeout(180_000);
  const ctx = await makeSmEnv();
  const w = await leafCandidate(ctx, 128 * MiB);
  try {
    const v = w.uuid('V');
    const depthBefore = depthOf(await readTree(ctx), v);
    const gc = startGc(ctx, 32);
    await waitFor('the copy to start', () => copying(ctx), 60_000);
    const ms = await timed(async () => {
      await w.s.call('vdi_attach', { vdi_uuid: v, vdi_location: v, args: ['true'] });
      await w.s.call('vdi_activate', { vdi_uuid: v, vdi_location: v, args: ['true'] });
    });
    t.false(copyDone(ctx), 'activated while the copy ran');
    t.true(ms < VERB_LIMIT_MS, `attach + activate took ${Math.round(ms)} ms`);
    t.is(await gc.exited, 0);
    t.regex(readSmlog(ctx), /Leaf-coalesce of \w+ abandoned: the VDI was activated during the copy/);
    t.is(depthOf(await readTree(ctx), v), depthBefore, 'the chain is as it was');
    await w.s.call('vdi_deactivate', { vdi_uuid: v, vdi_location: v });
    await w.s.call('vdi_detach', { vdi_uuid: v, vdi_location: v });
    await w.check(t);
  } finally {
    await w.close();
    await ctx.cleanup();
  }
});
