/**
 * Datapath benchmarks: VHD chains served over NBD by our server (its own Node
 * process, test/bench/nbd-serve.ts) against qemu-nbd, with fio's nbd engine as
 * the one client for both sides. Each figure is printed beside its baseline
 * measured in the same run, side by side, and the ratio.
 *
 * Needs qemu-nbd, qemu-img, qemu-io and fio (with the nbd engine). Set
 * BENCH_CPU_PROF=1 to run our server under `node --cpu-prof` (profiles are
 * written into BENCH_CPU_PROF_DIR, default the work dir, which is then kept).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { createDifferencing, createDynamic, VhdChain } from '../../lib/vhd/index.js';
import { MiB, report, workDir } from './measure.js';

const run = promisify(execFile);
const SERVE_JS = join(dirname(fileURLToPath(import.meta.url)), 'nbd-serve.js');
const DISK = 1024 * MiB;
const BLOCK = 2 * MiB;
const RUNTIME = Number(process.env.BENCH_RUNTIME ?? 8);
const CPU_PROF = process.env.BENCH_CPU_PROF === '1';

// ---------------------------------------------------------------- servers

interface Served {
  label: string;
  socket: string;
  pid: number;
  stop(): Promise<void>;
}

/** Every server started and not yet stopped: stopped in `finally` and at exit. */
const live = new Set<Served>();
process.on('exit', () => {
  for (const s of live) {
    try {
      process.kill(s.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

/** True while `pid` runs (a zombie, e.g. a forked qemu-nbd reparented to an init that does not reap, counts as gone). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) [ZX]/s.test(stat);
  } catch {
    return false;
  }
}

async function waitGone(pid: number, ms: number): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; ) {
    if (!alive(pid)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return !alive(pid);
}

async function stopAll(): Promise<void> {
  await Promise.all([...live].map((s) => s.stop()));
}

/** Our server in a process of its own, serving `exports` (name → leaf path) on one socket. */
async function startOurs(dir: string, exports: Array<[string, string]>, label = 'ours'): Promise<Served> {
  const socket = join(dir, `ours-${live.size}-${Date.now()}.sock`);
  const nodeArgs = CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF_DIR ?? dir}`] : [];
  const child: ChildProcess = spawn(process.execPath, [...nodeArgs, SERVE_JS, socket, ...exports.map(([n, p]) => `${n}=${p}`)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('our server did not start in 60 s')), 60_000);
    child.once('exit', (code) => reject(new Error(`our server exited (${code}) before it was ready`)));
    child.stdout!.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
  }).catch((err) => {
    child.kill('SIGKILL');
    throw err;
  });
  const served: Served = {
    label,
    socket,
    pid: child.pid!,
    stop: async () => {
      live.delete(served);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 30_000);
        await exited;
        clearTimeout(t);
      }
    },
  };
  live.add(served);
  return served;
}

/** qemu-nbd, forked, its pid taken from the pid file; `cache` is qemu's cache mode. */
async function startQemu(
  dir: string,
  name: string,
  format: 'vpc' | 'qcow2',
  image: string,
  cache: 'none' | 'writeback' = 'none',
  readOnly = false,
): Promise<Served> {
  const tag = `qemu-${live.size}-${Date.now()}`;
  const socket = join(dir, `${tag}.sock`);
  const pidFile = join(dir, `${tag}.pid`);
  const aio = cache === 'none' ? 'native' : 'threads';
  try {
    await run('qemu-nbd', ['-f', format, '-k', socket, '-x', name, '-t', '-e', '4', `--cache=${cache}`, `--aio=${aio}`, '--fork', `--pid-file=${pidFile}`, ...(readOnly ? ['-r'] : []), image]);
  } catch (err) {
    if (existsSync(pidFile)) killPidFile(pidFile);
    throw err;
  }
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  const served: Served = {
    label: `qemu-nbd cache=${cache}`,
    socket,
    pid,
    stop: async () => {
      live.delete(served);
      if (!alive(pid)) return;
      process.kill(pid, 'SIGTERM');
      if (!(await waitGone(pid, 10_000))) process.kill(pid, 'SIGKILL');
      await waitGone(pid, 5_000);
    },
  };
  live.add(served);
  return served;
}

function killPidFile(pidFile: string): void {
  try {
    process.kill(Number(readFileSync(pidFile, 'utf8').trim()), 'SIGKILL');
  } catch {
    /* nothing to kill */
  }
}

const uri = (s: Served, name: string) => `nbd+unix:///${name}?socket=${s.socket}`;

// ---------------------------------------------------------------- fio

interface FioResult {
  bw: number; // MiB/s
  iops: number;
  latMeanUs: number;
  latP99Us: number;
}

async function fio(served: Served, name: string, args: string[]): Promise<FioResult> {
  const { stdout } = await run('fio', ['--name=bench', '--ioengine=nbd', `--uri=${uri(served, name)}`, '--output-format=json', `--size=${DISK}`, ...args], {
    maxBuffer: 64 * MiB,
  });
  const json = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: Array<Record<string, FioSide>> };
  const job = json.jobs[0];
  const side = job.write.io_bytes > 0 ? job.write : job.read;
  return {
    bw: side.bw_bytes / MiB,
    iops: side.iops,
    latMeanUs: side.lat_ns.mean / 1000,
    latP99Us: (side.clat_ns.percentile?.['99.000000'] ?? 0) / 1000,
  };
}

interface FioSide {
  io_bytes: number;
  bw_bytes: number;
  iops: number;
  lat_ns: { mean: number };
  clat_ns: { percentile?: Record<string, number> };
}

/** Sequential writes fill the first half of the disk (qemu-nbd's vpc writes are slow); the reads stay in that half. */
const WRITTEN = DISK / 2;
const SEQ_WRITE = ['--rw=write', '--bs=1M', '--iodepth=8', `--io_size=${WRITTEN}`, '--end_fsync=1'];
const SEQ_READ = ['--rw=read', '--bs=1M', '--iodepth=8', '--time_based', `--runtime=${RUNTIME}`];
const WRITTEN_ONLY = `--size=${WRITTEN}`;
const RAND_READ = ['--rw=randread', '--bs=4k', '--iodepth=16', '--time_based', `--runtime=${RUNTIME}`, '--randrepeat=1'];
const RAND_WRITE = ['--rw=randwrite', '--bs=4k', '--iodepth=16', '--time_based', `--runtime=${RUNTIME}`, '--end_fsync=1', '--randrepeat=1'];


const fmtBw = (r: FioResult) => `${r.bw.toFixed(0)} MiB/s, lat ${r.latMeanUs.toFixed(0)} us`;
const fmtIops = (r: FioResult) => `${r.iops.toFixed(0)} IOPS, lat ${r.latMeanUs.toFixed(0)} us (p99 ${r.latP99Us.toFixed(0)})`;

/** Figures kept for the caller (docs), in print order. */
export const figures: Array<{ group: string; workload: string; sides: string[]; values: string[]; ratios: string[] }> = [];

// ---------------------------------------------------------------- 1. one image

type Side = { label: string; start: (dir: string, name: string, image: string) => Promise<Served> };
const SIDES: Side[] = [
  { label: 'ours', start: (dir, name, image) => startOurs(dir, [[name, image]]) },
  { label: 'qemu-nbd cache=none aio=native', start: (dir, name, image) => startQemu(dir, name, 'vpc', image, 'none') },
  { label: 'qemu-nbd cache=writeback', start: (dir, name, image) => startQemu(dir, name, 'vpc', image, 'writeback') },
];

async function singleImage(): Promise<void> {
  const { dir, cleanup } = workDir('datapath');
  try {
    // Every side gets two fresh images, A (sequential write, then the reads of
    // what it wrote) and B (random writes into an empty disk); all servers run
    // at once and the timed runs alternate between the sides, so a change in
    // the host's load falls on every side alike.
    const servers: Array<{ a: Served; b: Served }> = [];
    for (const [i, side] of SIDES.entries()) {
      const a = join(dir, `a${i}.vhd`);
      const b = join(dir, `b${i}.vhd`);
      await createDynamic(a, DISK);
      await createDynamic(b, DISK);
      servers.push({ a: await side.start(dir, 'disk', a), b: await side.start(dir, 'disk', b) });
    }
    const workloads = [
      { title: 'seq write 1 MiB QD8, 512 MiB into an empty 1 GiB disk, then fsync', args: SEQ_WRITE, image: 'a' as const, rounds: 1, iops: false },
      { title: 'seq read 1 MiB QD8 of the written 512 MiB', args: [...SEQ_READ, WRITTEN_ONLY], image: 'a' as const, rounds: 4, iops: false },
      { title: 'rand read 4 KiB QD16 of the written 512 MiB', args: [...RAND_READ, WRITTEN_ONLY], image: 'a' as const, rounds: 4, iops: true },
      { title: 'rand write 4 KiB QD16 into an empty disk, then fsync', args: RAND_WRITE, image: 'b' as const, rounds: 1, iops: true },
    ];
    const rows: [string, string][] = [];
    for (const w of workloads) {
      const rs = await alternate(
        servers.map((sv) => [sv[w.image], 'disk'] as [Served, string]),
        w.args,
        w.rounds,
      );
      const val = (x: FioResult) => (w.iops ? x.iops : x.bw);
      const fmt = w.iops ? fmtIops : fmtBw;
      rows.push([w.title, '']);
      for (const [i, side] of SIDES.entries()) rows.push([`  ${side.label}`, fmt(rs[i])]);
      const r1 = (val(rs[0]) / val(rs[1])).toFixed(2);
      const r2 = (val(rs[0]) / val(rs[2])).toFixed(2);
      rows.push(['  ratio ours / qemu-nbd cache=none (goal >= 1.0)', r1]);
      rows.push(['  ratio ours / qemu-nbd cache=writeback', r2]);
      figures.push({ group: 'single', workload: w.title, sides: SIDES.map((s) => s.label), values: rs.map(fmt), ratios: [r1, r2] });
    }
    report(`one 1 GiB dynamic VHD over NBD, fio nbd engine, ${RUNTIME} s per side for timed runs (loaded 2-core host)`, rows);
  } finally {
    await stopAll();
    if (!CPU_PROF) cleanup();
  }
}

/** Runs `args` against each target in `rounds` rounds (order reversed every other round), split runtime; means per target. */
async function alternate(targets: Array<[Served, string]>, args: string[], rounds: number): Promise<FioResult[]> {
  const per: FioResult[][] = targets.map(() => []);
  const split = args.map((a) => (a.startsWith('--runtime=') ? `--runtime=${Math.max(1, Math.round(RUNTIME / rounds))}` : a));
  for (let r = 0; r < rounds; r++) {
    const order = targets.map((_, i) => i);
    if (r % 2 === 1) order.reverse();
    for (const i of order) per[i].push(await fio(targets[i][0], targets[i][1], rounds > 1 ? split : args));
  }
  return per.map(mean);
}

function mean(rs: FioResult[]): FioResult {
  const avg = (f: (r: FioResult) => number) => rs.reduce((s, r) => s + f(r), 0) / rs.length;
  return { bw: avg((r) => r.bw), iops: avg((r) => r.iops), latMeanUs: avg((r) => r.latMeanUs), latP99Us: Math.max(...rs.map((r) => r.latP99Us)) };
}

// ---------------------------------------------------------------- 2. a 10-deep chain

const DEPTH = 10;

/** The writes of layer `d`: about 10% of the blocks, each written whole or as 1 MiB inside it. */
function layerWrites(d: number): Array<{ offset: number; length: number; pattern: number }> {
  const out: Array<{ offset: number; length: number; pattern: number }> = [];
  const blocks = DISK / BLOCK;
  for (let i = 0; i < blocks; i++) {
    const h = (Math.imul(i + 1, 2654435761) ^ Math.imul(d + 1, 40503)) >>> 0;
    if (h % 10 !== 0) continue;
    const pattern = (d * 37 + i * 11 + 1) & 0xff;
    if (i % 2 === 0) out.push({ offset: i * BLOCK, length: BLOCK, pattern });
    else out.push({ offset: i * BLOCK + 512 * 1024, length: MiB, pattern });
  }
  return out;
}

async function writeVhd(path: string, writes: Array<{ offset: number; length: number; pattern: number }>): Promise<void> {
  const chain = await VhdChain.open(path, { writable: true });
  try {
    for (const w of writes) await chain.write(Buffer.alloc(w.length, w.pattern), w.offset);
    await chain.sync();
  } finally {
    await chain.close();
  }
}

async function writeQcow2(path: string, writes: Array<{ offset: number; length: number; pattern: number }>): Promise<void> {
  const cmds = writes.flatMap((w) => ['-c', `write -q -P ${w.pattern} ${w.offset} ${w.length}`]);
  await run('qemu-io', ['-f', 'qcow2', ...cmds, '-c', 'flush', path], { maxBuffer: 16 * MiB });
}

async function deepChain(): Promise<void> {
  const { dir, cleanup } = workDir('datapath-chain');
  try {
    let leaf = '';
    let qleaf = '';
    const flat = join(dir, 'flat.vhd');
    await createDynamic(flat, DISK);
    for (let d = 0; d < DEPTH; d++) {
      const vhd = join(dir, `l${d}.vhd`);
      const qcow = join(dir, `l${d}.qcow2`);
      if (d === 0) {
        await createDynamic(vhd, DISK);
        await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=2M', qcow, String(DISK)]);
      } else {
        await createDifferencing(vhd, leaf);
        await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=2M', '-F', 'qcow2', '-b', qleaf, qcow]);
      }
      const writes = layerWrites(d);
      await writeVhd(vhd, writes);
      await writeQcow2(qcow, writes);
      await writeVhd(flat, writes);
      leaf = vhd;
      qleaf = qcow;
    }
    const rows: [string, string][] = [];
    const ours = await startOurs(dir, [
      ['chain', leaf],
      ['flat', flat],
    ]);
    // Both qemu-nbd serve the one qcow2 chain at once, so both read-only (image locking).
    const qemu = await startQemu(dir, 'chain', 'qcow2', qleaf, 'none', true);
    const qemuWb = await startQemu(dir, 'chain', 'qcow2', qleaf, 'writeback', true);
    try {
      // Same bytes everywhere: compare our chain with the qcow2 chain, both over NBD.
      const cmp = await run('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', uri(ours, 'chain'), uri(qemuWb, 'chain')]).then(
        () => 'identical',
        (err: { code?: number }) => `DIFFER (qemu-img compare exit ${err.code})`,
      );
      const [chainR, flatR, qR, qwR] = await alternate(
        [
          [ours, 'chain'],
          [ours, 'flat'],
          [qemu, 'chain'],
          [qemuWb, 'chain'],
        ],
        SEQ_READ,
        4,
      );
      rows.push(['contents: our chain vs the qcow2 chain over NBD', cmp]);
      rows.push(['ours, 10-deep VHD chain', fmtBw(chainR)]);
      rows.push(['ours, the same data in one VHD', fmtBw(flatR)]);
      rows.push(['qemu-nbd cache=none aio=native, 10-deep qcow2 chain', fmtBw(qR)]);
      rows.push(['qemu-nbd cache=writeback, 10-deep qcow2 chain', fmtBw(qwR)]);
      rows.push(['ratio chain / one image, ours (goal >= 0.8)', (chainR.bw / flatR.bw).toFixed(2)]);
      rows.push(['ratio ours / qemu-nbd qcow2 cache=none (goal >= 1.0)', (chainR.bw / qR.bw).toFixed(2)]);
      rows.push(['ratio ours / qemu-nbd qcow2 cache=writeback', (chainR.bw / qwR.bw).toFixed(2)]);
      figures.push({
        group: 'chain',
        workload: 'seq read 1 MiB QD8, 10-deep chain',
        sides: ['ours chain', 'ours one image', 'qemu qcow2 cache=none', 'qemu qcow2 cache=writeback'],
        values: [chainR, flatR, qR, qwR].map(fmtBw),
        ratios: [(chainR.bw / flatR.bw).toFixed(2), (chainR.bw / qR.bw).toFixed(2), (chainR.bw / qwR.bw).toFixed(2)],
      });
    } finally {
      await stopAll();
    }
    report(`sequential read of a 1 GiB disk through a ${DEPTH}-deep chain (each layer ~10% of the blocks), ${RUNTIME} s each (loaded 2-core host)`, rows);
  } finally {
    if (!CPU_PROF) cleanup();
  }
}

// ---------------------------------------------------------------- 3. memory per export

/** A minimal NBD client: fixed newstyle, NO_ZEROES, OPT_GO, simple replies. */
class TinyNbdClient {
  private chunks: Buffer[] = [];
  private have = 0;
  private wake: (() => void) | undefined;
  private cookie = 0n;

  private constructor(private readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.have += d.length;
      this.wake?.();
    });
  }

  static async open(path: string, name: string): Promise<TinyNbdClient> {
    const sock = connect(path);
    await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    const c = new TinyNbdClient(sock);
    await c.take(18); // NBDMAGIC, IHAVEOPT, handshake flags
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(3);
    const nameBuf = Buffer.from(name);
    const opt = Buffer.alloc(16 + 4 + nameBuf.length + 2);
    opt.writeBigUInt64BE(0x49484156454f5054n, 0);
    opt.writeUInt32BE(7, 8); // GO
    opt.writeUInt32BE(4 + nameBuf.length + 2, 12);
    opt.writeUInt32BE(nameBuf.length, 16);
    nameBuf.copy(opt, 20);
    sock.write(Buffer.concat([flags, opt]));
    for (;;) {
      const h = await c.take(20);
      const type = h.readUInt32BE(12);
      await c.take(h.readUInt32BE(16));
      if (type === 1) return c; // ACK
      if (type >= 0x80000000) throw new Error(`NBD GO refused: 0x${type.toString(16)}`);
    }
  }

  async write(data: Buffer, offset: number): Promise<void> {
    await this.request(1, offset, data.length, data);
  }

  async read(length: number, offset: number): Promise<Buffer> {
    return this.request(0, offset, length);
  }

  close(): void {
    const req = Buffer.alloc(28);
    req.writeUInt32BE(0x25609513, 0);
    req.writeUInt16BE(2, 6); // DISC
    this.sock.end(req);
  }

  private async request(type: number, offset: number, length: number, payload?: Buffer): Promise<Buffer> {
    const req = Buffer.alloc(28);
    req.writeUInt32BE(0x25609513, 0);
    req.writeUInt16BE(type, 6);
    req.writeBigUInt64BE(++this.cookie, 8);
    req.writeBigUInt64BE(BigInt(offset), 16);
    req.writeUInt32BE(length, 24);
    this.sock.write(payload ? Buffer.concat([req, payload]) : req);
    const reply = await this.take(16);
    if (reply.readUInt32BE(4) !== 0) throw new Error(`NBD error ${reply.readUInt32BE(4)}`);
    return type === 0 ? this.take(length) : Buffer.alloc(0);
  }

  private async take(n: number): Promise<Buffer> {
    while (this.have < n) await new Promise<void>((r) => (this.wake = r));
    const all = Buffer.concat(this.chunks);
    this.chunks = [all.subarray(n)];
    this.have -= n;
    return all.subarray(0, n);
  }
}

function vmRssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

async function memoryPerExport(): Promise<void> {
  const { dir, cleanup } = workDir('datapath-rss');
  try {
    const images: string[] = [];
    for (let i = 0; i < 50; i++) {
      const p = join(dir, `e${i}.vhd`);
      await createDynamic(p, 10 * 1024 * MiB);
      images.push(p);
    }
    const rss: Record<number, number> = {};
    for (const n of [1, 10, 50]) {
      const s = await startOurs(
        dir,
        images.slice(0, n).map((p, i) => [`e${i}`, p]),
      );
      const clients: TinyNbdClient[] = [];
      try {
        for (let i = 0; i < n; i++) {
          const c = await TinyNbdClient.open(s.socket, `e${i}`);
          clients.push(c);
          // Some I/O: a new block (1 MiB write), 64 small writes, reads of both.
          await c.write(Buffer.alloc(MiB, i + 1), 3 * BLOCK);
          for (let k = 0; k < 64; k++) await c.write(Buffer.alloc(4096, k), (k * 37 + i) * BLOCK + 4096 * k);
          await c.read(MiB, 3 * BLOCK);
          await c.read(256 * 1024, 0);
        }
        await new Promise((r) => setTimeout(r, 1000));
        rss[n] = vmRssMiB(s.pid);
      } finally {
        for (const c of clients) c.close();
        await s.stop();
      }
    }
    const per10 = (rss[10] - rss[1]) / 9;
    const per50 = (rss[50] - rss[1]) / 49;
    report('server RSS with N exports (10 GiB dynamic VHDs), each with a client connected after some I/O', [
      ['VmRSS, 1 export', `${rss[1].toFixed(1)} MiB`],
      ['VmRSS, 10 exports', `${rss[10].toFixed(1)} MiB`],
      ['VmRSS, 50 exports', `${rss[50].toFixed(1)} MiB`],
      ['per additional export, 1 -> 10', `${per10.toFixed(2)} MiB`],
      ['per additional export, 1 -> 50 (goal <= 10)', `${per50.toFixed(2)} MiB`],
    ]);
    figures.push({
      group: 'rss',
      workload: 'VmRSS 1 / 10 / 50 exports',
      sides: ['1', '10', '50'],
      values: [rss[1], rss[10], rss[50]].map((v) => `${v.toFixed(1)} MiB`),
      ratios: [per10.toFixed(2), per50.toFixed(2)],
    });
  } finally {
    await stopAll();
    cleanup();
  }
}

async function versions(): Promise<string> {
  const first = async (cmd: string, args: string[]) => (await run(cmd, args).then((r) => r.stdout, () => '?')).split('\n')[0].trim();
  return `node ${process.version}, ${await first('qemu-nbd', ['--version'])}, ${await first('fio', ['--version'])}`;
}

export async function runDatapathBenchmarks(): Promise<void> {
  const only = process.env.BENCH_DATAPATH?.split(',');
  console.log(`\ndatapath: ${await versions()}; host shared with other work (load figures are same-run ratios)`);
  const want = (k: string) => !only || only.includes(k);
  if (want('single')) await singleImage();
  if (want('chain')) await deepChain();
  if (want('rss')) await memoryPerExport();
}
