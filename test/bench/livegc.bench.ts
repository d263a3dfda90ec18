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
 *    MiB, under the same load, against `cp` + fsync of as many bytes, also under it.
 */
import { readFileSync, writeFileSync } from 'node:fs';
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

/** The datapath's own pause figures from SMlog, by what the GC paused for (the line before each unpause says it). */
function pausesFromLog(smlog: string, vdi: string): { relink: number[]; leaf: number[] } {
  const out = { relink: [] as number[], leaf: [] as number[] };
  let kind: 'relink' | 'leaf' | undefined;
  for (const line of smlog.split('\n')) {
    if (line.includes(`SMGC:`) && line.includes(`VDI ${vdi}: datapath paused for a relink`)) kind = 'relink';
    else if (line.includes(`SMGC:`) && line.includes(`VDI ${vdi}: datapath paused for a live leaf-coalesce`)) kind = 'leaf';
    const m = /SMGC: \[\d+\] VDI (\S+): datapath unpaused on \S+; paused (\d+) ms/.exec(line);
    if (m && m[1] === vdi && kind) {
      out[kind].push(Number(m[2]));
      kind = undefined;
    }
  }
  return out;
}

const p50max = (xs: number[]) => (xs.length ? `p50 ${percentile(xs, 50).toFixed(0)} ms, max ${Math.max(...xs).toFixed(0)} ms (${xs.length} pauses)` : 'none');

export async function runLiveGcBenchmarks(): Promise<void> {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx);
  try {
    // 1. Pauses.
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
    if (process.env.BENCH_LIVEGC_LOG === '1') console.log(readFileSync(ctx.smlog, 'utf8').split('\n').filter((x) => /Live leaf|paused|Relinking|given up/.test(x)).join('\n'));
    report(`Live GC pauses: ${CYCLES} cycles of 2 snapshots deleted + sm-gc -g under QD${QD} 4 KiB random writes (${size / MiB} MiB VDI, File SR)`, [
      ['datapath pause, relink', p50max(pauses.relink)],
      ['datapath pause, final leaf-coalesce step', p50max(pauses.leaf)],
      ['slowest client write during each GC run', p50max(gcMax)],
      ['slowest client write, 2 s without GC (baseline)', `${quiet.toFixed(0)} ms`],
      ['writes completed', String(l.samples.length)],
    ]);
    await deactivate(w, v);

    // 2. Speed: a leaf of LEAF_MIB.
    const big = await w.create('L', LEAF_MIB * MiB + 64 * MiB);
    await w.fill('L', 0, 16 * MiB);
    await w.snapshot('L', 'Ls');
    await w.fill('L', 0, LEAF_MIB * MiB);
    await w.delete('Ls');
    await activate(w, big);
    const l2 = await load(w, big, LEAF_MIB * MiB);
    const raw = join(ctx.base, 'same-bytes.raw');
    writeFileSync(raw, Buffer.alloc(LEAF_MIB * MiB, 7));
    const cp = await copyBaseline(raw, join(ctx.base, 'copy.raw'));
    const t0 = performance.now();
    await gc(ctx);
    const ms = performance.now() - t0;
    await l2.stop();
    const log = readFileSync(ctx.smlog, 'utf8');
    const rounds = log.split('\n').filter((x) => x.includes(`Live leaf-coalesce of ${big.slice(0, 8)}, round`) && x.includes('MiB/s)'));
    const leafPause = pausesFromLog(log, big).leaf;
    report(`Live leaf-coalesce of a ${LEAF_MIB} MiB leaf under QD${QD} 4 KiB random writes (File SR)`, [
      ['sm-gc -g (whole process)', `${(ms / 1000).toFixed(2)} s  ${mibps(LEAF_MIB * MiB, ms).toFixed(0)} MiB/s`],
      ['cp + fsync of the same bytes, same load', `${(cp / 1000).toFixed(2)} s  ${mibps(LEAF_MIB * MiB, cp).toFixed(0)} MiB/s`],
      ['speed ratio GC / copy (goal >= 0.7)', (cp / ms).toFixed(2)],
      ['rounds', rounds.map((x) => x.replace(/^.*round (\d+): /, 'r$1: ')).join(' | ')],
      ['final step pause', leafPause.length ? `${leafPause[0]} ms` : 'none (given up?)'],
    ]);
    await deactivate(w, big);
  } finally {
    await w.close();
    await ctx.cleanup();
  }
}
