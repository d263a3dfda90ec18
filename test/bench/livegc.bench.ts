/**
 * The GC on live chains (`npm run bench -- livegc`), through the whole stack: a
 * FileSR driver, the VDI served by sm-datapath, a QD16 load of 4 KiB random
 * writes from 16 NBD connections, `sm-gc -g` runs.
 *
 * 1. Pauses: cycles of two snapshots taken and deleted, then the GC (a relink
 *    under the active leaf, then its live leaf-coalesce). Per pause: how long
 *    the datapath held requests (its own figure, from SMlog), and the slowest
 *    client write during the GC against the slowest one without a GC, same run.
 * 2. Speed: the live leaf-coalesce of a leaf holding BENCH_LIVEGC_MIB (1024)
 *    MiB against `cp` + fsync of as many bytes: first with the VDI idle (the
 *    copy's own speed), then under the same load (the copy, and the rounds
 *    catching up with the writes).
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { activate, deactivate } from '../helpers/live-load.js';
import { openNbd, type NbdVdiClient } from '../helpers/nbd-vdi.js';
import { gc, makeSmEnv } from '../helpers/sm.js';
import { World } from '../helpers/world.js';
import { copyBaseline, mibps, MiB, percentile, report } from './measure.js';

const LEAF_MIB = Number(process.env.BENCH_LIVEGC_MIB ?? 1024);
const CYCLES = Number(process.env.BENCH_LIVEGC_CYCLES ?? 5);
const QD = 16;

/** QD16 random 4 KiB writes over `size` bytes; every write's latency, with when it ended. */
async function load(w: World, vdi: string, size: number) {
  const conns: NbdVdiClient[] = [];
  for (let i = 0; i < QD; i++) conns.push(await openNbd(w.ctx, vdi));
  const samples: { end: number; ms: number }[] = [];
  let stop = false;
  const data = Buffer.alloc(4096, 0x5a);
  const loops = conns.map(async (c, k) => {
    let x = 977 + k;
    while (!stop) {
      x = (x * 1103515245 + 12345) % 2147483648;
      const t0 = performance.now();
      await c.write(Math.floor((x / 2147483648) * (size / 4096)) * 4096, data);
      const t1 = performance.now();
      samples.push({ end: t1, ms: t1 - t0 });
    }
  });
  return {
    samples,
    /** The slowest write that ended within [from, to]. */
    maxBetween: (from: number, to: number) => Math.max(0, ...samples.filter((s) => s.end >= from && s.end <= to).map((s) => s.ms)),
    async stop() {
      stop = true;
      await Promise.all(loops);
      for (const c of conns) c.close();
    },
  };
}

/**
 * The datapath's own pause figures from SMlog, by what the GC paused for (the line before each unpause says it);
 * `leaf` splits into the final steps that swapped and the pauses that gave up (too much written just before).
 */
function pausesFromLog(smlog: string, vdi: string): { relink: number[]; leaf: number[]; leafDone: number[]; leafGivenUp: number[] } {
  const out = { relink: [] as number[], leaf: [] as number[], leafDone: [] as number[], leafGivenUp: [] as number[] };
  let kind: 'relink' | 'leaf' | undefined;
  let swapped = false;
  for (const line of smlog.split('\n')) {
    if (line.includes(`SMGC:`) && line.includes(`VDI ${vdi}: datapath paused for a relink`)) kind = 'relink';
    else if (line.includes(`SMGC:`) && line.includes(`VDI ${vdi}: datapath paused for a live leaf-coalesce`)) [kind, swapped] = ['leaf', false];
    if (line.includes(`Live leaf-coalesce of ${vdi.slice(0, 8)}: final step (`)) swapped = true;
    const m = /SMGC: \[\d+\] VDI (\S+): datapath unpaused on \S+; paused (\d+) ms/.exec(line);
    if (m && m[1] === vdi && kind) {
      out[kind].push(Number(m[2]));
      if (kind === 'leaf') (swapped ? out.leafDone : out.leafGivenUp).push(Number(m[2]));
      kind = undefined;
    }
  }
  return out;
}

/** Cycles of two snapshots deleted under a written VDI, then the GC: the pauses it takes. */
async function pauseCycles(ctx: Awaited<ReturnType<typeof makeSmEnv>>, w: World): Promise<void> {
  const size = 256 * MiB;
  const v = await w.create('V', size);
  await w.fill('V', 0, 64 * MiB);
  await activate(w, v);
  const l = await load(w, v, size);
  await new Promise((r) => setTimeout(r, 2000));
  const quiet = l.maxBetween(0, performance.now());
  const gcMax: number[] = [];
  for (let i = 0; i < CYCLES; i++) {
    await w.snapshot('V', `A${i}`);
    await new Promise((r) => setTimeout(r, 300));
    await w.snapshot('V', `B${i}`);
    await w.delete(`A${i}`);
    await w.delete(`B${i}`);
    const from = performance.now();
    await gc(ctx);
    gcMax.push(l.maxBetween(from, performance.now() + 1));
  }
  await l.stop();
  const pauses = pausesFromLog(readFileSync(ctx.smlog, 'utf8'), v);
  // The whole SMlog kept for reading each pause's steps (the test root is removed at the end).
  if (process.env.BENCH_LIVEGC_SMLOG) copyFileSync(ctx.smlog, process.env.BENCH_LIVEGC_SMLOG);
  if (process.env.BENCH_LIVEGC_LOG === '1') console.log(readFileSync(ctx.smlog, 'utf8').split('\n').filter((x) => /Live leaf|paused|Relinking|given up/.test(x)).join('\n'));
  report(`Live GC pauses: ${CYCLES} cycles of 2 snapshots deleted + sm-gc -g under QD${QD} 4 KiB random writes (${size / MiB} MiB VDI, File SR)`, [
    ['datapath pause, relink', p50max(pauses.relink)],
    ['datapath pause, final leaf-coalesce step', p50max(pauses.leaf)],
    ['  of which the final step and swap', p50max(pauses.leafDone)],
    ['  of which given up (too much written just before)', p50max(pauses.leafGivenUp)],
    ['slowest client write during each GC run', p50max(gcMax)],
    ['slowest client write, 2 s without GC (baseline)', `${quiet.toFixed(0)} ms`],
    ['writes completed', String(l.samples.length)],
  ]);
  await deactivate(w, v);
}

/**
 * A copy through user space, as the coalesce copies (read into a buffer, write
 * it out), then fsync: `cp` copies in the kernel (copy_file_range), which costs
 * a fraction of the CPU on a busy host, so this says how much of the gap is that.
 */
async function userSpaceCopy(src: string, dst: string): Promise<number> {
  const t0 = performance.now();
  execFileSync('dd', [`if=${src}`, `of=${dst}`, 'bs=2M', 'conv=fsync', 'status=none']);
  return performance.now() - t0;
}

/**
 * A leaf of LEAF_MIB (written whole, over a hidden parent holding 16 MiB) live
 * leaf-coalesced by `sm-gc -g`, against `cp` + fsync of as many bytes in the
 * same conditions. Idle: nobody writes the VDI, so the figure is the copy's
 * speed; loaded: QD16 random 4 KiB writes meanwhile, so the rounds must catch up.
 */
async function leafCoalesceSpeed(ctx: Awaited<ReturnType<typeof makeSmEnv>>, w: World, name: string, loaded: boolean): Promise<void> {
  const vdi = await w.create(name, LEAF_MIB * MiB + 64 * MiB);
  await w.fill(name, 0, 16 * MiB);
  await w.snapshot(name, `${name}s`);
  await w.fill(name, 0, LEAF_MIB * MiB);
  await w.delete(`${name}s`);
  await activate(w, vdi);
  const l = loaded ? await load(w, vdi, LEAF_MIB * MiB) : undefined;
  const raw = join(ctx.base, `${name}-same-bytes.raw`);
  writeFileSync(raw, Buffer.alloc(LEAF_MIB * MiB, 7));
  const copy = join(ctx.base, `${name}-copy.raw`);
  const cpBefore = await copyBaseline(raw, copy);
  rmSync(copy);
  const dd = await userSpaceCopy(raw, copy);
  rmSync(copy);
  const t0 = performance.now();
  await gc(ctx);
  const ms = performance.now() - t0;
  // cp again after: the host's load drifts over a run, so the baseline is the mean of one before and one after.
  const cpAfter = await copyBaseline(raw, copy);
  const cp = (cpBefore + cpAfter) / 2;
  await l?.stop();
  rmSync(raw);
  rmSync(copy);
  const log = readFileSync(ctx.smlog, 'utf8');
  if (process.env.BENCH_LIVEGC_LOG === '1') console.log(log.split('\n').filter((x) => x.includes('SMGC') && (x.includes(vdi.slice(0, 8)) || x.includes('PROF'))).join('\n'));
  const rounds = log.split('\n').filter((x) => x.includes(`Live leaf-coalesce of ${vdi.slice(0, 8)}, round`) && x.includes('MiB/s)'));
  const leafPauses = pausesFromLog(log, vdi);
  const round0 = /round 0: .*\(([\d.]+) MiB\/s\)/.exec(rounds[0] ?? '');
  const cpRate = mibps(LEAF_MIB * MiB, cp);
  const how = loaded ? `under QD${QD} 4 KiB random writes` : 'idle (no writer)';
  report(`Live leaf-coalesce of a ${LEAF_MIB} MiB leaf, ${how} (File SR), load average ${loadavg()[0].toFixed(1)}`, [
    ['sm-gc -g (whole process)', `${(ms / 1000).toFixed(2)} s  ${mibps(LEAF_MIB * MiB, ms).toFixed(0)} MiB/s`],
    [`cp + fsync of the same bytes, ${loaded ? 'same load' : 'idle'} (mean of before and after)`, `${(cp / 1000).toFixed(2)} s  ${cpRate.toFixed(0)} MiB/s  (${(cpBefore / 1000).toFixed(2)} / ${(cpAfter / 1000).toFixed(2)} s)`],
    ['dd bs=2M conv=fsync (read + write, as our copy)', `${(dd / 1000).toFixed(2)} s  ${mibps(LEAF_MIB * MiB, dd).toFixed(0)} MiB/s  (cp / dd ${(cp / dd).toFixed(2)})`],
    ['speed ratio sm-gc / copy (goal >= 0.7)', (cp / ms).toFixed(2)],
    ['speed ratio round 0 (the whole leaf) / copy', round0 ? (Number(round0[1]) / cpRate).toFixed(2) : 'no round 0'],
    ['rounds', rounds.map((x) => x.replace(/^.*, round ([^:]+): /, 'r$1: ')).join(' | ')],
    ['final step pause (swapped; pauses that found too much written and let go)', `${leafPauses.leafDone.map((ms) => `${ms} ms`).join(', ') || 'none'}; ${leafPauses.leafGivenUp.map((ms) => `${ms} ms`).join(', ') || 'none'}`],
  ]);
  await deactivate(w, vdi);
}

const p50max = (xs: number[]) => (xs.length ? `p50 ${percentile(xs, 50).toFixed(0)} ms, max ${Math.max(...xs).toFixed(0)} ms (${xs.length} pauses)` : 'none');

export async function runLiveGcBenchmarks(): Promise<void> {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx);
  try {
    // 1. Pauses (BENCH_LIVEGC_CYCLES=0: speed only).
    if (CYCLES > 0) await pauseCycles(ctx, w);

    // 2. Speed: the copy alone (the VDI idle), then under the same load.
    // (BENCH_LIVEGC_SPEED=idle or loaded: that one only; none: the pauses only.)
    const speed = process.env.BENCH_LIVEGC_SPEED;
    if (speed === 'none') return;
    if (speed !== 'loaded') await leafCoalesceSpeed(ctx, w, 'L1', false);
    if (speed !== 'idle') await leafCoalesceSpeed(ctx, w, 'L2', true);
  } finally {
    await w.close();
    await ctx.cleanup();
  }
}
