/**
 * Pause stall (`npm run bench -- pausestall`): what a guest writing to an
 * active VDI sees while the VDI is snapshotted. A File SR through
 * `drivers/FileSR --serve`, one active 1 GiB VDI served by sm-datapath, fio's
 * nbd engine writing 4 KiB at random offsets with 16 in flight and logging
 * every I/O (completion time and latency), and meanwhile N vdi_snapshot calls,
 * one per slot. For each snapshot: the longest latency of an I/O in flight
 * during the call, the longest gap without a completion, and the pause the
 * datapath logged in SMlog. The baseline is the same measures over windows of
 * the same length with no snapshot, between the snapshots of the same run.
 * Any I/O error in fio fails the bench.
 *
 * BENCH_SNAPSHOTS (default 20) and BENCH_SLOT_MS (default 2500) set the count
 * and the spacing.
 */
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { controlCall } from '../../lib/datapath/control.js';
import { startSr } from './sr.bench.js';
import { percentile, report, workDir } from './measure.js';

const SNAPSHOTS = Number(process.env.BENCH_SNAPSHOTS ?? 20);
const SLOT_MS = Number(process.env.BENCH_SLOT_MS ?? 2500);
const WARMUP_MS = 3000;
const DISK = 1024 * 1024 * 1024;
/**
 * The writes stay in the first 64 MiB (32 blocks): after each snapshot the new
 * leaf has those blocks allocated within moments, so the load is the steady
 * one between snapshots rather than one 2 MiB block allocation per 4 KiB write.
 */
const WORKING_SET = 64 * 1024 * 1024;

interface Completion {
  at: number; // epoch ms of the completion
  latMs: number;
}

interface Window {
  from: number;
  to: number;
}

/** fio's per-I/O latency log (`--write_lat_log`, `--log_unix_epoch=1`): epoch ms, latency in ns, direction, size, offset. */
function readLatLog(dir: string, prefix: string): Completion[] {
  const file = readdirSync(dir).find((f) => f.startsWith(`${prefix}_lat.`) && f.endsWith('.log'));
  if (!file) throw new Error(`fio wrote no latency log in ${dir}`);
  const out: Completion[] = [];
  for (const line of readFileSync(join(dir, file), 'utf8').split('\n')) {
    const [at, lat] = line.split(',');
    if (lat === undefined) continue;
    out.push({ at: Number(at), latMs: Number(lat) / 1e6 });
  }
  return out.sort((a, b) => a.at - b.at);
}

/** The longest latency of an I/O in flight at some point of `w`, and the longest stretch of `w` with no completion. */
function stallIn(all: Completion[], w: Window): { maxLatMs: number; maxGapMs: number; completions: number } {
  let maxLatMs = 0;
  let last = w.from;
  let maxGapMs = 0;
  let completions = 0;
  for (const c of all) {
    if (c.at >= w.from && c.at - c.latMs <= w.to) maxLatMs = Math.max(maxLatMs, c.latMs);
    if (c.at >= w.from && c.at <= w.to) {
      maxGapMs = Math.max(maxGapMs, c.at - last);
      last = c.at;
      completions++;
    }
  }
  maxGapMs = Math.max(maxGapMs, w.to - last);
  return { maxLatMs, maxGapMs, completions };
}

const defined = (xs: Array<number | undefined>) => xs.filter((x): x is number => x !== undefined);
const sleepUntil = (t: number) => new Promise((r) => setTimeout(r, Math.max(0, t - Date.now())));
const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

async function pauseStall(): Promise<void> {
  const { dir, cleanup } = workDir('pausestall');
  const sr = await startSr(dir);
  let fio: ReturnType<typeof spawn> | undefined;
  let datapathPid: number | undefined;
  try {
    await sr.call('sr_create', {}, ['0']);
    await sr.call('sr_attach');
    const vdi = ((await sr.call('vdi_create', {}, [String(DISK), 'stall', '', '', 'false', '', '', 'false'])) as { uuid: string }).uuid;
    const attached = (await sr.call('vdi_attach', { vdi_uuid: vdi }, ['true'])) as { params_nbd: string };
    await sr.call('vdi_activate', { vdi_uuid: vdi }, ['true']);
    datapathPid = (await controlCall(join(dir, 'root/run/sm/datapath', `${attached.params_nbd.split('/').at(-2)}.sock`), { op: 'list' })).pid;
    // A unix socket address holds 107 bytes; the link under the bench's SM_ROOT can be longer.
    const link = join(dir, 'v.sock');
    symlinkSync(attached.params_nbd.split(':')[2], link);
    const smlog = join(dir, 'root/var/log/SMlog');

    const runtime = Math.ceil((WARMUP_MS + SNAPSHOTS * SLOT_MS + 2000) / 1000);
    const prefix = 'stall';
    const args = [
      '--name=stall',
      '--ioengine=nbd',
      `--uri=nbd+unix:///${vdi}?socket=${link}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      `--size=${WORKING_SET}`,
      '--time_based',
      `--runtime=${runtime}`,
      '--randrepeat=1',
      `--write_lat_log=${join(dir, prefix)}`,
      '--log_unix_epoch=1',
      '--output-format=json',
    ];
    let stdout = '';
    let stderr = '';
    fio = spawn('fio', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    fio.stdout!.on('data', (d) => (stdout += d));
    fio.stderr!.on('data', (d) => (stderr += d));
    const fioDone = new Promise<number | null>((r) => fio!.once('exit', (code) => r(code)));
    const t0 = Date.now();
    const loadBefore = loadavg();

    const snaps: Array<Window & { pauseMs?: number; flushedBeforeMs?: number; drainMs?: number; settleMs?: number; openMs?: number; opened?: string; verbSteps: Record<string, number> }> = [];
    for (let k = 0; k < SNAPSHOTS; k++) {
      await sleepUntil(t0 + WARMUP_MS + k * SLOT_MS);
      const logBefore = readFileSync(smlog, 'utf8').length;
      const from = Date.now();
      await sr.call('vdi_snapshot', { vdi_uuid: vdi });
      const to = Date.now();
      const logged = readFileSync(smlog, 'utf8').slice(logBefore);
      const m = /datapath unpaused on .*; paused (\d+) ms/.exec(logged);
      const held = /datapath paused in \d+ ms \(flushed beforehand in (\d+) ms; held: drained and flushed in (\d+) ms, settled in (\d+) ms\)/.exec(logged);
      const opened = /unpaused on .* ms paused \((\d+) of (\d+) images opened in (\d+) ms/.exec(logged);
      snaps.push({
        from,
        to,
        pauseMs: m ? Number(m[1]) : undefined,
        ...(held ? { flushedBeforeMs: Number(held[1]), drainMs: Number(held[2]), settleMs: Number(held[3]) } : {}),
        ...(opened ? { openMs: Number(opened[3]), opened: `${opened[1]} of ${opened[2]}` } : {}),
        verbSteps: Object.fromEntries([...(/snapshot made .*\((checks [^)]*)\)/.exec(logged)?.[1] ?? '').matchAll(/([a-z ]+) (\d+) ms/g)].map((x) => [x[1].trim(), Number(x[2])])),
      });
    }
    const loadAfter = loadavg();
    const code = await fioDone;
    fio = undefined;
    const json = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<{ error: number; write: { iops: number; total_ios: number; io_bytes: number } }> };
    const job = json.jobs[0];
    if (code !== 0 || job.error !== 0) throw new Error(`fio reported an I/O error (exit ${code}, job error ${job.error}): ${stderr}`);
    const log = readLatLog(dir, prefix);
    const fioEnd = log[log.length - 1]?.at ?? 0;
    if (snaps[snaps.length - 1].to > fioEnd) throw new Error(`the snapshots outlasted the load (last ended ${snaps[snaps.length - 1].to - fioEnd} ms after fio's last completion): raise BENCH_SLOT_MS`);

    // Baseline windows: as long as the snapshot of the slot, placed after it where no snapshot runs.
    const baselines: Window[] = [];
    for (let k = 0; k < snaps.length; k++) {
      const len = snaps[k].to - snaps[k].from;
      const from = snaps[k].to + 200;
      const limit = k + 1 < snaps.length ? snaps[k + 1].from - 50 : fioEnd - 200;
      if (from + len <= limit) baselines.push({ from, to: from + len });
    }
    const during = snaps.map((w) => stallIn(log, w));
    const quiet = baselines.map((w) => stallIn(log, w));
    const pauses = snaps.map((s) => s.pauseMs).filter((x): x is number => x !== undefined);
    const calls = snaps.map((s) => s.to - s.from);
    const p50 = (xs: number[]) => percentile(xs, 50);
    const max = (xs: number[]) => Math.max(...xs);
    const f = (xs: number[]) => `p50 ${p50(xs).toFixed(0)} ms, max ${max(xs).toFixed(0)} ms`;
    const stall = during.map((d) => d.maxLatMs);
    const base = quiet.map((d) => d.maxLatMs);
    report(`pause stall: QD16 4 KiB random writes (fio nbd engine) over the first 64 MiB of an active 1 GiB VDI on a File SR, ${SNAPSHOTS} vdi_snapshot calls through --serve, one per ${SLOT_MS} ms (load average ${loadBefore} before, ${loadAfter} after)`, [
      ['load during the run', `${job.write.iops.toFixed(0)} IOPS, ${job.write.total_ios} writes, 0 errors`],
      ['longest I/O latency during a snapshot call (goal p50 <= 50 ms)', f(stall)],
      ['longest gap without a completion during a snapshot call', f(during.map((d) => d.maxGapMs))],
      ['pause logged by the datapath (SMlog)', `${f(pauses)} (${pauses.length} of ${snaps.length} logged)`],
      ['  before it, not held: the flush while clients still run (SMlog)', f(defined(snaps.map((x) => x.flushedBeforeMs)))],
      ['  of which: requests held, in flight drained, leaf flushed (SMlog)', f(defined(snaps.map((x) => x.drainMs)))],
      ['  of which: leaf settled (batmap) (SMlog)', f(defined(snaps.map((x) => x.settleMs)))],
      ['  of which: the new chain opened at the unpause (SMlog)', `${f(defined(snaps.map((x) => x.openMs)))}; images opened: ${snaps[snaps.length - 1].opened ?? '?'} (last snapshot)`],
      ['  the verb\'s steps meanwhile (SMlog), p50', Object.keys(snaps[0].verbSteps).map((k) => `${k} ${p50(snaps.map((x) => x.verbSteps[k] ?? 0)).toFixed(0)} ms`).join(', ')],
      ['vdi_snapshot call', f(calls)],
      [`baseline: the same load, ${baselines.length} windows of the same lengths without a snapshot, longest I/O latency`, f(base)],
      ['baseline: longest gap without a completion', f(quiet.map((d) => d.maxGapMs))],
      ['ratio stall / baseline, p50 of longest latency', (p50(stall) / p50(base)).toFixed(2)],
    ]);
    if (pauses.length !== snaps.length) throw new Error(`only ${pauses.length} of ${snaps.length} pauses were logged`);
    await sr.call('vdi_deactivate', { vdi_uuid: vdi });
    await sr.call('vdi_detach', { vdi_uuid: vdi });
  } finally {
    fio?.kill('SIGKILL');
    await sr.close();
    // After a failure the datapath may still serve: it goes with the bench's directory.
    if (datapathPid !== undefined) {
      try {
        process.kill(datapathPid, 'SIGKILL');
      } catch {
        /* exited after the deactivate */
      }
    }
    cleanup();
  }
}

export async function runPauseStallBenchmark(): Promise<void> {
  await pauseStall();
}
