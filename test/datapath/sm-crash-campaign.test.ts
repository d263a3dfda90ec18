// The datapath killed under load, through the SM as a toolstack drives it:
// a File SR, a VDI (with a snapshot under it for some seeds, so its chain has
// a parent) activated and served by sm-datapath, two NBD clients writing
// random-size data at random offsets (each in its own half of the disk, a
// FLUSH every few writes, some writes FUA). The datapath is SIGKILLed at a
// random instant, or dies at one of its fault points (SM_FAULT reaches it
// through the activating driver's environment). Then vdi_deactivate finds the
// dead datapath and cleans up, vdi_activate serves the VDI again, and through
// NBD: every write acknowledged before its client's last completed FLUSH and
// every acknowledged FUA write reads back, and every other byte is either its
// old value or one a later write put there. Every image of the SR then passes
// check (`sm-vhd check -p`), and qemu-img reads each dynamic image the same as
// our library does (qemu has no check for VHD, nor differencing support).
//
// SM_CRASH_SEEDS sets the number of seeds (default 4: under 2 minutes at load 15-25); SM_CRASH_SEED_BASE
// shifts them (a failure names its seed).
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { controlCall } from '../../lib/datapath/control.js';
import { imageInfo } from '../../lib/vhd/index.js';
import { MiB, pattern } from '../helpers/model.js';
import { isServed, openNbd, type NbdVdiClient } from '../helpers/nbd-vdi.js';
import { SeededRandom } from '../helpers/random.js';
import { callDriver, datapathPids, readSmlog, request, run, smVhd, waitFor } from '../helpers/sm.js';
import { checkProblems, imagePath, listImages } from '../helpers/sr-state.js';
import { withWorld, type World } from '../helpers/world.js';
import { readChain } from '../vhd/helpers.js';
import { CMD } from '../nbd/helpers.js';

const SEEDS = Number(process.env.SM_CRASH_SEEDS ?? 4);
const SEED_BASE = Number(process.env.SM_CRASH_SEED_BASE ?? 1);
// 16 blocks: writes keep allocating new blocks for a while, so the allocation fault points are reached.
const SIZE = 32 * MiB;
const FLUSH_EVERY = 4; // on average
const FUA_SHARE = 0.15;

const FAULTS = ['datapath-alloc-start', 'datapath-alloc-appended', 'datapath-flush-synced', 'datapath-flush-bat-written', 'datapath-bitmap-pending'];

interface Written {
  offset: number;
  data: Buffer;
  fua: boolean;
  acked: boolean;
}

/** One NBD connection writing into [from, to) one request at a time, with the model of what it was told. */
class Writer {
  readonly writes: Written[] = [];
  /** writes[0 .. durable) were acknowledged before the last FLUSH that completed. */
  durable = 0;
  flushes = 0;
  error: string | undefined;
  private cookie = 1n;

  constructor(
    private readonly c: NbdVdiClient,
    readonly from: number,
    readonly to: number,
    private readonly rng: SeededRandom,
  ) {}

  /** Writes until `stop()` or the connection is gone; a refused request is recorded as an error. */
  async run(stop: () => boolean): Promise<void> {
    while (!stop()) {
      if (this.rng.next() < 1 / FLUSH_EVERY && this.writes.length > this.durable) {
        const upTo = this.writes.length;
        const r = await this.send(CMD.FLUSH, 0, 0);
        if (r !== 'ok') return;
        this.durable = upTo;
        this.flushes++;
        continue;
      }
      const length = this.rng.next() < 0.5 ? this.rng.int(1, 128) * 512 : this.rng.int(1, 300_000);
      const offset = this.from + this.rng.int(0, this.to - this.from - length);
      const data = pattern(this.rng.int(1, 2 ** 30), length);
      const w: Written = { offset, data, fua: this.rng.next() < FUA_SHARE, acked: false };
      this.writes.push(w); // sent from here on: it may land
      const r = await this.send(CMD.WRITE, offset, length, data, w.fua ? 1 : 0);
      if (r !== 'ok') return;
      w.acked = true;
    }
  }

  close(): void {
    this.c.close();
  }

  private async send(type: number, offset: number, length: number, payload?: Buffer, flags = 0): Promise<'ok' | 'closed'> {
    this.c.raw.request(type, offset, length, { cookie: this.cookie++, payload, flags });
    const h = await this.c.raw.read(16, 60_000);
    if (!h) return 'closed';
    if (h.readUInt32BE(4) !== 0) {
      this.error = `request ${type} ${offset}+${length} got NBD error ${h.readUInt32BE(4)}`;
      return 'closed';
    }
    return 'ok';
  }

  /** First byte of [from, to) in `actual` the model cannot explain, with why; undefined if none. */
  judge(actual: Buffer, initial: Buffer): string | undefined {
    const durable = Buffer.from(initial.subarray(this.from, this.to));
    for (const w of this.writes.slice(0, this.durable)) w.data.copy(durable, w.offset - this.from);
    const later = this.writes.slice(this.durable);
    // 0: must be the durable value; 1: free (durable or a later write's); 2: must be the FUA value in `fua`.
    const mask = new Uint8Array(this.to - this.from);
    const fua = Buffer.alloc(this.to - this.from);
    for (const w of later) {
      const at = w.offset - this.from;
      if (w.fua && w.acked) {
        mask.fill(2, at, at + w.data.length);
        w.data.copy(fua, at);
      } else mask.fill(1, at, at + w.data.length);
    }
    const region = actual.subarray(this.from, this.to);
    for (let b = 0; b < region.length; b++) {
      const v = region[b];
      if (mask[b] === 0 && v !== durable[b]) return `byte ${this.from + b}: ${v}, not its value as of the last completed FLUSH (${durable[b]}); no later write touched it`;
      if (mask[b] === 2 && v !== fua[b]) return `byte ${this.from + b}: ${v}, not the acknowledged FUA write's ${fua[b]}`;
      if (mask[b] === 1 && v !== durable[b] && !later.some((w) => this.from + b >= w.offset && this.from + b < w.offset + w.data.length && w.data[this.from + b - w.offset] === v)) {
        return `byte ${this.from + b}: ${v} is neither its flushed value (${durable[b]}) nor one a later write put there`;
      }
    }
    return undefined;
  }
}

const vdiArgs = (vdi: string, extra: Record<string, unknown> = {}) => ({ vdi_uuid: vdi, vdi_location: vdi, ...extra });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** qemu-img's read of each dynamic image equals our library's (differencing images: qemu opens them without their parent). */
async function qemuAgrees(w: World): Promise<string[]> {
  const problems: string[] = [];
  for (const uuid of listImages(w.ctx)) {
    const p = imagePath(w.ctx, uuid);
    if ((await imageInfo(p)).parentName !== undefined) continue;
    const raw = path.join(w.ctx.base, `${uuid}.raw`);
    fs.writeFileSync(raw, await readChain(p));
    const r = await run('qemu-img', ['compare', '-q', '-f', 'vpc', '-F', 'raw', p, raw], { timeoutMs: 60_000 });
    fs.rmSync(raw);
    if (r.code !== 0) problems.push(`${uuid}.vhd: qemu-img compare exit ${r.code} ${r.stderr.trim()}`);
  }
  return problems;
}

async function oneSeed(t: ExecutionContext, w: World, seed: number, stats: Record<string, number>): Promise<void> {
  const ctx = w.ctx;
  const rng = new SeededRandom(seed * 104_729);
  const withParent = rng.next() < 0.5;
  const fault = rng.next() < 0.4 ? `${rng.pick(FAULTS)}:${rng.int(1, 6)}` : undefined;
  const killAfterMs = rng.int(30, 900);
  const what = `seed ${seed} (${withParent ? 'with a parent' : 'no parent'}, ${fault ? `fault ${fault}` : `kill +${killAfterMs} ms`})`;

  const V = await w.create(`V${seed}`, SIZE);
  if (withParent) {
    await w.fill(`V${seed}`, rng.int(0, 4) * MiB, rng.int(1, 6) * MiB);
    await w.snapshot(`V${seed}`, `S${seed}`);
  }
  const initial = w.models.get(V)!.raw();
  await w.s.call('vdi_attach', vdiArgs(V, { args: ['true'] }));
  // Activated by the driver executable, as the toolstack calls it; a fault point
  // is set in its environment, which the datapath it starts inherits.
  const env = { ...ctx.env };
  if (fault) env.SM_FAULT = fault;
  const act = await callDriver('vdi_activate', request(ctx, 'vdi_activate', vdiArgs(V, { args: ['true'] })), env);
  t.is(act.code, 0, `${what}: activate: ${act.stderr}`);
  // Its pid as the control socket tells it (every reply carries it).
  const listed = await controlCall(path.join(ctx.root, 'run', 'sm', 'datapath', `${ctx.sr}.sock`), { op: 'list' });
  const pid = listed.pid;
  t.true(listed.served?.some((x) => x.vdi === V && x.writable), `${what}: the datapath serves the VDI writable`);
  t.deepEqual(datapathPids(ctx.root), [pid], `${what}: one datapath process`);

  const writers = [
    new Writer(await openNbd(ctx, V), 0, SIZE / 2, new SeededRandom(seed * 7 + 1)),
    new Writer(await openNbd(ctx, V), SIZE / 2, SIZE, new SeededRandom(seed * 7 + 2)),
  ];
  let stop = false;
  const running = writers.map((x) => x.run(() => stop));
  const gone = () => !fs.existsSync(`/proc/${pid}`) || /^\d+ \(.*\) [ZX]/s.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  let how: string;
  if (fault) {
    // The fault point kills it; if the writes never reach it in 3 s, a kill ends the run.
    const end = Date.now() + 3_000;
    while (!gone() && Date.now() < end) await sleep(10);
    how = gone() ? 'fault point reached' : 'fault point not reached, killed';
  } else {
    await sleep(killAfterMs);
    how = 'killed';
  }
  if (!gone()) process.kill(pid, 'SIGKILL');
  await Promise.all(running);
  stop = true;
  for (const x of writers) x.close();
  stats[how] = (stats[how] ?? 0) + 1;
  for (const x of writers) t.is(x.error, undefined, `${what}: no request refused before the kill`);

  // Clean-up as a toolstack does: deactivate (finds the dead datapath), activate again.
  await w.s.call('vdi_deactivate', vdiArgs(V));
  t.regex(readSmlog(ctx), new RegExp(`VDI ${V}: its datapath had died`), `${what}: deactivate found the dead datapath`);
  t.false(isServed(ctx, V));
  await w.s.call('vdi_activate', vdiArgs(V, { args: ['true'] }));
  const reader = await openNbd(ctx, V);
  const actual = await reader.read(0, SIZE);
  reader.close();
  for (const x of writers) {
    const bad = x.judge(actual, initial);
    t.is(bad, undefined, `${what}: ${bad}`);
    stats.writes = (stats.writes ?? 0) + x.writes.length;
    stats.acknowledged = (stats.acknowledged ?? 0) + x.writes.filter((y) => y.acked).length;
    stats['durable (before a completed flush)'] = (stats['durable (before a completed flush)'] ?? 0) + x.durable;
    stats['acknowledged FUA'] = (stats['acknowledged FUA'] ?? 0) + x.writes.filter((y) => y.fua && y.acked).length;
    stats.flushes = (stats.flushes ?? 0) + x.flushes;
  }
  await w.s.call('vdi_deactivate', vdiArgs(V));
  await w.s.call('vdi_detach', vdiArgs(V));
  await waitFor('the datapath to exit', () => datapathPids(ctx.root).length === 0 || undefined, 20_000);

  t.deepEqual(await checkProblems(ctx), [], `${what}: every image passes check`);
  const cli = await smVhd(['check', '-n', imagePath(ctx, V), '-p']);
  t.is(cli.code, 0, `${what}: sm-vhd check -p of the leaf: ${cli.stdout}${cli.stderr}`);
  t.deepEqual(await qemuAgrees(w), [], `${what}: qemu-img reads the dynamic images as we do`);
  // What it reads as now is what the next seed's world must keep.
  w.models.get(V)!.write(0, actual);
  t.log(`${what}: ${how}; ${writers.map((x) => `${x.writes.length} writes, ${x.durable} flushed, ${x.writes.filter((y) => y.fua && y.acked).length} FUA`).join(' / ')}`);
}

test('sm-datapath killed under NBD writes, at random instants and at its fault points: the SM cleans up, flushed and FUA writes read back, images check clean', async (t) => {
  const stats: Record<string, number> = {};
  const started = Date.now();
  await withWorld(async (w) => {
    for (let seed = SEED_BASE; seed < SEED_BASE + SEEDS; seed++) {
      await oneSeed(t, w, seed, stats);
      // Keep the SR small: the VDI and its snapshot go once checked.
      for (const name of [`V${seed}`, `S${seed}`]) if (Object.values(w.names).includes(name)) await w.delete(name);
    }
    await w.check(t);
  });
  t.log(`${SEEDS} seeds from ${SEED_BASE} in ${((Date.now() - started) / 1000).toFixed(1)} s: ${Object.entries(stats).map(([k, v]) => `${k} ${v}`).join(', ')}`);
});
