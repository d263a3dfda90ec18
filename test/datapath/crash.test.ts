// A writable device killed (SIGKILL) at random instants and at each of its
// fault points: the image still opens, the device's own writable open is the
// only recovery, the project's check then finds nothing, the parent is
// untouched, and every write acknowledged before the last completed flush
// (and every acknowledged FUA write) reads back.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { openVhdDevice } from '../../lib/datapath/vhd-device.js';
import { checkChain, createDifferencing, createDynamic, VhdImage, writeAt } from '../../lib/vhd/index.js';
import { assertChainValid, readChain, Rng, withTempDir } from '../vhd/helpers.js';
import { CRASH_DISK, crashRound, fuaWrite, type PlannedWrite } from './workload.js';

const CHILD = fileURLToPath(new URL('./crash-child.js', import.meta.url));

interface CrashCase {
  seed: number;
  differencing: boolean;
  mode: 'rounds' | 'fua';
  /** SM_FAULT for the child; otherwise it is killed `killAfterMs` after it is ready. */
  fault?: string;
  killAfterMs?: number;
  rounds?: number;
}

interface Progress {
  lines: string[];
  lastFlushed: number;
  lastStarted: number;
  fua: number[];
  closed: boolean;
}

function parseProgress(text: string): Progress {
  const lines = text.split('\n').filter(Boolean);
  const p: Progress = { lines, lastFlushed: -1, lastStarted: -1, fua: [], closed: false };
  for (const l of lines) {
    const [what, n] = l.split(' ');
    if (what === 'flushed') p.lastFlushed = Number(n);
    else if (what === 'start') p.lastStarted = Number(n);
    else if (what === 'fua') p.fua.push(Number(n));
    else if (what === 'closed') p.closed = true;
  }
  return p;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sha = async (p: string) => createHash('sha256').update(await readFile(p)).digest('hex');

async function runChild(c: CrashCase, leaf: string, progressPath: string): Promise<{ signal: string | null; code: number | null; timedOut: boolean }> {
  const args = [CHILD, leaf, String(c.seed), c.mode, progressPath];
  if (c.rounds !== undefined) args.push(String(c.rounds));
  const env = { ...process.env };
  delete env.SM_FAULT;
  if (c.fault) env.SM_FAULT = c.fault;
  const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<{ signal: string | null; code: number | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  if (!c.fault) {
    const deadline = Date.now() + 15_000;
    while (!(existsSync(progressPath) && (await readFile(progressPath, 'utf8')).includes('ready')) && Date.now() < deadline) await sleep(10);
    await sleep(c.killAfterMs ?? 0);
    child.kill('SIGKILL');
  }
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, 20_000);
  const r = await exited;
  clearTimeout(timer);
  if (r.code !== null && r.code !== 0) throw new Error(`child failed (${r.code}): ${stderr}`);
  return { ...r, timedOut };
}

async function crashAndRecover(t: ExecutionContext, c: CrashCase): Promise<void> {
  const what = `seed ${c.seed} ${c.differencing ? 'differencing' : 'dynamic'} ${c.mode} ${c.fault ?? `kill +${c.killAfterMs} ms`}`;
  await withTempDir(async (dir) => {
    const leaf = join(dir, 'leaf.vhd');
    const initial = Buffer.alloc(CRASH_DISK);
    let base: string | undefined;
    if (c.differencing) {
      base = join(dir, 'base.vhd');
      await createDynamic(base, CRASH_DISK);
      const rng = new Rng(c.seed);
      for (let k = 0; k < 6; k++) {
        const data = rng.bytes(rng.range(1, 600_000));
        const offset = rng.int(CRASH_DISK - data.length);
        await writeAt(base, data, offset);
        data.copy(initial, offset);
      }
      await createDifferencing(leaf, base);
    } else {
      await createDynamic(leaf, CRASH_DISK);
    }
    const baseHash = base ? await sha(base) : '';
    const progressPath = join(dir, 'progress');
    const exit = await runChild(c, leaf, progressPath);
    const p = parseProgress(existsSync(progressPath) ? await readFile(progressPath, 'utf8') : '');
    if (c.fault) t.true(exit.signal === 'SIGKILL' && !exit.timedOut, `${what}: the fault point was reached`);

    // As left by the kill: it opens, and check finds at most data under clear bits (what the scrub is for).
    await (await VhdImage.open(leaf)).close();
    const before = (await checkChain(leaf, { parents: true })).flatMap((r) => r.problems);
    t.deepEqual(before.filter((m) => !/holds data but its bitmap bit is clear/.test(m)), [], `${what}: only unmarked data before recovery`);
    // Killed between a sector's data and its bit: the state the writable open's scrub exists for.
    if (c.fault?.startsWith('datapath-bitmap-pending')) t.true(before.length > 0, `${what}: data under a clear bit before recovery`);

    const dev = await openVhdDevice(leaf, { writable: true });
    await dev.close();
    await assertChainValid(t, leaf, what);
    if (base) t.is(await sha(base), baseHash, `${what}: parent unchanged`);

    const actual = await readChain(leaf);
    if (c.mode === 'fua') {
      const bad = p.fua.filter((k) => {
        const w = fuaWrite(c.seed, k);
        return !actual.subarray(w.offset, w.offset + w.data.length).equals(w.data);
      });
      t.deepEqual(bad, [], `${what}: every acknowledged FUA write reads back (${p.fua.length})`);
      return;
    }
    const lastDurable = p.closed ? Infinity : p.lastFlushed;
    const durable = Buffer.from(initial);
    for (let r = 0; r <= Math.min(lastDurable, p.lastStarted); r++) for (const w of crashRound(c.seed, r)) w.data.copy(durable, w.offset);
    const later: PlannedWrite[] = [];
    for (let r = lastDurable + 1; r <= p.lastStarted; r++) later.push(...crashRound(c.seed, r));
    const bad = unexplainedBytes(actual, durable, later);
    t.is(bad, -1, `${what}: byte ${bad} is neither its flushed value nor one a later write put there (flushed round ${p.lastFlushed}, last started ${p.lastStarted})`);
    t.log(`${what}: ${p.lastStarted + 1} rounds started, flushed through ${p.lastFlushed}${p.closed ? ', closed' : ''}; ${before.length} blocks with unmarked data before recovery`);
  });
}

/** First byte of `actual` that differs from `durable` and is not the value some later write has there; -1 if none. */
function unexplainedBytes(actual: Buffer, durable: Buffer, later: PlannedWrite[]): number {
  const CHUNK = 65536;
  for (let at = 0; at < actual.length; at += CHUNK) {
    const end = Math.min(actual.length, at + CHUNK);
    if (actual.subarray(at, end).equals(durable.subarray(at, end))) continue;
    for (let b = at; b < end; b++) {
      if (actual[b] === durable[b]) continue;
      if (!later.some((w) => b >= w.offset && b < w.offset + w.data.length && w.data[b - w.offset] === actual[b])) return b;
    }
  }
  return -1;
}

test('killed at random instants: recovers, checks clean, flushed writes read back', async (t) => {
  const rng = new Rng(2024);
  for (let seed = 1; seed <= 6; seed++) {
    await crashAndRecover(t, { seed, differencing: seed % 2 === 0, mode: 'rounds', killAfterMs: rng.range(20, 700) });
  }
});

test('killed at each fault point of the writable device', async (t) => {
  const cases: Array<[string, boolean, number?]> = [
    ['datapath-alloc-start:6', true],
    ['datapath-alloc-appended:5', false],
    ['datapath-flush-synced:2', true],
    ['datapath-flush-bat-written:2', false],
    ['datapath-bitmap-pending:25', true],
    ['datapath-bitmap-pending:40', false],
    ['datapath-close-flushed', true, 5],
  ];
  let seed = 100;
  for (const [fault, differencing, rounds] of cases) await crashAndRecover(t, { seed: seed++, differencing, mode: 'rounds', fault, rounds });
});

test('killed during FUA writes: every acknowledged FUA write reads back', async (t) => {
  for (const [seed, ms] of [[31, 150], [32, 400]]) await crashAndRecover(t, { seed, differencing: seed % 2 === 0, mode: 'fua', killAfterMs: ms });
});
