// Controlling the collector: --dry-run, -q, two collectors at once, -a during a
// big coalesce (the chain stays readable, a later -g finishes), what it writes
// to SMlog, and drivers starting it by themselves after vdi_delete and sr_scan.
import { spawn } from 'node:child_process';
import test from 'ava';
import { MiB } from '../helpers/model.js';
import { makeSmEnv, readSmlog, SM_GC, smGc, smVhd, waitFor, waitForStartedGcs, type RunResult, type SmEnv } from '../helpers/sm.js';
import { imagePath, snapshotDir } from '../helpers/sr-state.js';
import { World } from '../helpers/world.js';

const GiB = 1024 * MiB;

function startGc(ctx: SmEnv, env: Record<string, string> = {}): { pid: number; done: Promise<RunResult & { exitedAt: number }> } {
  const started = Date.now();
  const child = spawn(process.execPath, [SM_GC, '-u', ctx.sr, '-g'], { env: { ...ctx.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const done = new Promise<RunResult & { exitedAt: number }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, ms: Date.now() - started, exitedAt: Date.now() })),
  );
  return { pid: child.pid!, done };
}

const gcLines = (ctx: SmEnv, pid: number) => readSmlog(ctx).split('\n').filter((l) => l.includes(` SMGC: [${pid}] `));

test('dry-run, two collectors at once, -q, -a during a big coalesce, then -g finishes; SMlog shows it all', async (t) => {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx);
  try {
    // 1 GiB VDI, 896 MiB written in a snapshot chain: B1 (64 MiB) <- B2 (832 MiB) <- V.
    // Copying B2 takes seconds here: time for `sm-gc -q` and `sm-gc -a` to start while it runs.
    await w.create('V', GiB);
    await w.fill('V', 0, 64 * MiB);
    await w.snapshot('V', 'S1');
    await w.fill('V', 96 * MiB, 832 * MiB);
    await w.snapshot('V', 'S2');
    await w.fill('V', 900 * MiB + 512, 3 * MiB);
    await w.delete('S1');
    await w.delete('S2');
    t.is(await w.shape(), '*?(*?(V))');

    // --dry-run prints the plan and changes nothing
    const before = snapshotDir(ctx.base, (rel) => rel === 'root/var/log/SMlog' || rel.endsWith('.sock'));
    const dry = await smGc(ctx, ['--dry-run']);
    t.is(dry.code, 0, dry.stderr);
    t.regex(dry.stdout, /^SR [0-9a-f]{4} \('test SR'\) \(\d+ VDIs in 1 VHD trees\):$/m);
    t.regex(dry.stdout, /^ {12}\*[0-9a-f]{8}\[VHD\]\(1\.000G\/\/.*\|n\)$/m);
    t.regex(dry.stdout, /^plan:$/m);
    t.regex(dry.stdout, /^ {2}coalesce \*[0-9a-f]{8}\[VHD\].* into [0-9a-f]{8}, then relink its 1 children$/m);
    t.deepEqual(snapshotDir(ctx.base, (rel) => rel === 'root/var/log/SMlog' || rel.endsWith('.sock')), before, '--dry-run changed nothing');
    t.false(readSmlog(ctx).includes('SMGC:'), '--dry-run did not run a collection');

    const q0 = await smGc(ctx, ['-q']);
    t.is(q0.stdout, 'Currently running: False\n');

    // Two collectors started together: one works, the other finds it and leaves.
    // Copy rate capped (an operator setting) so that the copy surely still runs when -q and -a
    // arrive, however loaded the machine: 832 MiB at 64 MiB/s is 13 s.
    const gc1 = startGc(ctx, { SM_GC_MAX_MIBPS: '64' });
    const gc2 = startGc(ctx, { SM_GC_MAX_MIBPS: '64' });
    await waitFor('the coalesce to start', () => readSmlog(ctx).includes('Running VHD coalesce on *') || undefined, 60_000, 20);
    const coalesceSeen = Date.now();
    const q1 = await smGc(ctx, ['-q']);
    t.is(q1.stdout, 'Currently running: True\n', '-q sees the running collection');
    const abort = await smGc(ctx, ['-a']);
    const [r1, r2] = await Promise.all([gc1.done, gc2.done]);
    t.log(`coalesce seen, then -q took ${q1.ms} ms and -a ${abort.ms} ms; the collector exited ${Math.max(r1.exitedAt, r2.exitedAt) - coalesceSeen} ms after the coalesce began`);
    t.is(abort.code, 0, abort.stderr);
    t.is(abort.stdout, 'GC aborted\n');
    t.is(r1.code, 0);
    t.is(r2.code, 0);
    const [worker, other] = gcLines(ctx, gc1.pid).some((l) => l.includes('=== SR')) ? [gc1, gc2] : [gc2, gc1];
    const workerLines = gcLines(ctx, worker.pid);
    const otherLines = gcLines(ctx, other.pid);
    t.true(workerLines.some((l) => l.endsWith(`=== SR ${ctx.sr}: gc ===`)), 'one collector worked');
    t.deepEqual(otherLines.map((l) => l.replace(/^.* SMGC: \[\d+\] /, '')), ['Another GC instance already active, exiting'], 'the other only said so');
    t.true(workerLines.some((l) => l.includes('Abort requested')));
    t.true(workerLines.some((l) => l.includes('GC process exiting: aborted')), 'the worker stopped because of the abort');
    t.false(workerLines.some((l) => /Coalesce of [0-9a-f]{8}: copied/.test(l)), 'the coalesce did not finish');
    // The collector stops within a second of the request reaching it (its own figure: process
    // start-ups on a loaded host are not the collector's latency); -a returns once it has stopped.
    const q2 = await smGc(ctx, ['-q']);
    t.is(q2.stdout, 'Currently running: False\n');
    const latency = Number(/GC process exiting: aborted, (\d+) ms after the request/.exec(workerLines.join('\n'))?.[1]);
    t.true(latency < 1000, `stopped ${latency} ms after the abort request`);
    t.true(abort.ms - Math.min(q1.ms, q2.ms) < 5000, `sm-gc -a returned once the collector stopped (took ${abort.ms} ms, sm-gc -q ${Math.min(q1.ms, q2.ms)} ms)`);

    // Interrupted, the chain still reads as the model and passes check; the coalesce journal waits for the next run.
    t.is(await w.shape(), '*?(*?(V))');
    await w.check(t, { journalsAllowed: true });
    const check = await smVhd(['check', '-n', imagePath(ctx, w.uuid('V')), '-p']);
    t.is(check.code, 0, check.stdout);

    const fin = await smGc(ctx, ['-g']);
    t.is(fin.code, 0, fin.stderr);
    t.is(await w.shape(), 'V', 'a later run finishes the job');
    await w.check(t, { scanned: true });

    // SMlog as the established collector writes it
    const log = readSmlog(ctx);
    t.regex(log, new RegExp(`SMGC: \\[\\d+\\] === SR ${ctx.sr}: gc ===\\n`));
    t.regex(log, /SMGC: \[\d+\] SR [0-9a-f]{4} \('test SR'\) \(\d+ VDIs in 1 VHD trees\):\n/);
    t.regex(log, /SMGC: \[\d+\] {9}\*[0-9a-f]{8}\[VHD\]\(1\.000G\/\/[\d.]+M\|n\)\n/, 'tree lines: 8-space indent');
    t.regex(log, /SMGC: \[\d+\] {13}\*[0-9a-f]{8}\[VHD\]\(1\.000G\/\/[\d.]+M\|n\)\n/, 'tree lines: +4 per level');
    t.regex(log, /SMGC: \[\d+\] Running VHD coalesce on \*[0-9a-f]{8}/);
    t.regex(log, /SMGC: \[\d+\] Coalesce of [0-9a-f]{8}: copied \d+ sectors/);
    t.regex(log, /SMGC: \[\d+\] recovery: coalesce of [0-9a-f-]{36} redone/);
    t.regex(log, /SMGC: \[\d+\] Leaf-coalescing [0-9a-f]{8} into \*[0-9a-f]{8}/);
    t.regex(log, /SMGC: \[\d+\] GC process exiting, no work left\n$/);
  } finally {
    await w.close();
    await ctx.cleanup();
  }
});

test('drivers start the GC by themselves after vdi_delete and after sr_scan', async (t) => {
  const ctx = await makeSmEnv({ gc: true });
  const w = await World.open(ctx);
  try {
    await w.create('V', 16 * MiB);
    await w.fill('V', 0, 3 * MiB);
    await w.snapshot('V', 'S');
    await w.fill('V', 4 * MiB, 2 * MiB);
    t.is(await w.shape(), '*?(S,V)');
    await w.delete('S');
    await waitFor('the GC started by vdi_delete to collapse the tree', async () => ((await w.shape().catch(() => '')) === 'V' ? true : undefined), 60_000, 100);
    t.is((await waitForStartedGcs(ctx)).length, 1, 'vdi_delete started one GC');
    t.regex(readSmlog(ctx), /SM: \[\d+\] GC for SR [0-9a-f-]{36} started \(pid \d+\)/);
    await w.check(t);

    // Garbage made behind the driver's back: the next sr_scan starts a GC that removes it.
    const s2 = await w.snapshot('V', 'S2');
    const r = await smVhd(['set', '-n', imagePath(ctx, s2), '-f', 'hidden', '-v', '1']);
    t.is(r.code, 0);
    w.forget('S2');
    const runsBefore = (readSmlog(ctx).match(/=== SR .*: gc ===/g) ?? []).length;
    await w.scan();
    await waitFor('the GC started by sr_scan to collect the hidden leaf', async () => ((await w.shape().catch(() => '')) === 'V' ? true : undefined), 60_000, 100);
    t.is((await waitForStartedGcs(ctx)).length, 2, 'sr_scan started another');
    t.true((readSmlog(ctx).match(/=== SR .*: gc ===/g) ?? []).length > runsBefore);
    await w.check(t);
    t.is((await smGc(ctx, ['-q'])).stdout, 'Currently running: False\n');
  } finally {
    await w.close();
    await ctx.cleanup();
  }
});
