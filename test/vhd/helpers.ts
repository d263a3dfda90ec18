/** Shared helpers for the VHD tests: temp dirs, a seeded PRNG, a byte model, tool runners. */
import { execFile, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import { checkChain, exportRaw, VhdChain, VhdError } from '../../lib/vhd/index.js';
import { decodeHeader, encodeHeader } from '../../lib/vhd/format/header.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
export const BLOCK = 2 * MiB;
export const SECTOR = 512;

/** The compiled CLI (this file is dist/test/vhd/helpers.js once built). */
export const CLI = fileURLToPath(new URL('../../lib/vhd/cli/sm-vhd.js', import.meta.url));
/** blktap's own vhd-util, built locally for reference; absent in CI. */
export const REF_VHD_UTIL = '/tmp/ref/bin/vhd-util';
export const HAVE_REF = existsSync(REF_VHD_UTIL);

/** Runs fn in a fresh temp dir and removes the dir afterwards, whatever happens. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'vhd-test-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
export class Rng {
  private state: number;
  constructor(readonly seed: number) {
    this.state = seed >>> 0;
  }
  /** Uniform 32-bit unsigned integer. */
  next32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    return this.next32() / 4294967296;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** Integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
  /** Random bytes, never all zero (so a write is always visible). */
  bytes(n: number): Buffer {
    const words = new Uint32Array(Math.ceil(n / 4));
    for (let i = 0; i < words.length; i++) words[i] = this.next32();
    const b = Buffer.from(words.buffer, 0, n);
    if (n > 0 && n <= 16 && b.every((x) => x === 0)) b[0] = 1; // longer: 2^-128 odds
    return b;
  }
}

/** The expected content of a virtual disk: a plain Buffer of the virtual size. */
export class ByteModel {
  buf: Buffer;
  constructor(size: number) {
    this.buf = Buffer.alloc(size);
  }
  get size(): number {
    return this.buf.length;
  }
  write(offset: number, data: Buffer): void {
    data.copy(this.buf, offset);
  }
  grow(size: number): void {
    if (size < this.buf.length) throw new Error('the model only grows');
    const b = Buffer.alloc(size);
    this.buf.copy(b);
    this.buf = b;
  }
}

/** Index of the first differing byte, or -1 when equal (lengths included). */
export function firstDiff(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  if (a.subarray(0, n).equals(b.subarray(0, n))) return a.length === b.length ? -1 : n;
  // Narrow down in chunks, then bytes.
  let lo = 0;
  const step = 64 * KiB;
  while (lo < n && a.subarray(lo, Math.min(n, lo + step)).equals(b.subarray(lo, Math.min(n, lo + step)))) lo += step;
  for (let i = lo; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

/** Asserts two buffers are equal without dumping megabytes on failure. */
export function assertSameBytes(t: ExecutionContext, actual: Buffer, expected: Buffer, what: string): boolean {
  const d = firstDiff(actual, expected);
  if (d < 0) {
    t.pass();
    return true;
  }
  t.fail(
    `${what}: first difference at byte ${d} (block ${Math.floor(d / BLOCK)}, sector ${Math.floor(d / SECTOR)}): ` +
      `got ${actual[d]} expected ${expected[d]}; lengths ${actual.length} / ${expected.length}`,
  );
  return false;
}

/** The whole virtual disk of the chain whose leaf is `leaf`, read through VhdChain. */
/** Writes through a writable chain on `leaf`, and into the model. */
export async function writeAll(leaf: string, model: ByteModel, writes: [number, Buffer][]): Promise<void> {
  const chain = await VhdChain.open(leaf, { writable: true });
  try {
    for (const [offset, data] of writes) {
      await chain.write(data, offset);
      model.write(offset, data);
    }
  } finally {
    await chain.close();
  }
}

export async function readChain(leaf: string): Promise<Buffer> {
  const chain = await VhdChain.open(leaf);
  try {
    const out = Buffer.alloc(chain.virtualSize);
    await chain.read(out, 0);
    return out;
  } finally {
    await chain.close();
  }
}

/** The chain exported through exportRaw, read back. */
export async function exportChain(leaf: string, dir: string): Promise<Buffer> {
  const raw = join(dir, `export-${process.hrtime.bigint()}.raw`);
  await exportRaw(leaf, raw);
  try {
    return await readFile(raw);
  } finally {
    await rm(raw, { force: true });
  }
}

/** checkChain with parents; asserts not one problem on any image. */
export async function assertChainValid(t: ExecutionContext, leaf: string, what = leaf): Promise<void> {
  const reports = await checkChain(leaf, { parents: true });
  const problems = reports.flatMap((r) => r.problems.map((p) => `${r.path}: ${p}`));
  t.deepEqual(problems, [], `check of ${what}`);
}

export function isVhdError(err: unknown, kinds?: readonly string[]): err is VhdError {
  return err instanceof VhdError && (kinds === undefined || kinds.includes(err.kind));
}

/** Rejects if `p` takes longer than `ms` (a hang is a failure, not a stuck suite). */
export async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program with an argv array (never a shell). */
export function run(cmd: string, args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(
      cmd,
      args,
      { cwd: opts.cwd, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * MiB, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as NodeJS.ErrnoException).code === 'number' ? Number((err as NodeJS.ErrnoException).code) : -1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

export function runCli(args: string[], opts: { cwd?: string } = {}): Promise<RunResult> {
  return run(process.execPath, [CLI, ...args], opts);
}

/** qemu-img, synchronously; throws with its stderr when it fails. */
export function qemuImg(args: string[]): string {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8', maxBuffer: 64 * MiB });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/** Name -> sha256 of every file in dir (to prove a command wrote nothing). */
export async function dirState(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await readdir(dir)).sort()) {
    out[name] = createHash('sha256').update(await readFile(join(dir, name))).digest('hex');
  }
  return out;
}

/** Reads `length` raw bytes of a file at `position`. */
export async function readBytes(path: string, position: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(length);
    const { bytesRead } = await fh.read(b, 0, length, position);
    return b.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** Overwrites raw bytes of a file at `position`. */
export async function writeBytes(path: string, position: number, data: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(data, 0, data.length, position);
  } finally {
    await fh.close();
  }
}

/** One's complement of the byte sum, skipping the 4-byte field at `skip` (computed here, not by the library). */
export function onesComplementSum(buf: Buffer, skip: number): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i++) if (i < skip || i >= skip + 4) sum = (sum + buf[i]) >>> 0;
  return ~sum >>> 0;
}

/** Rewrites every parent locator of `child` (MacX, W2ku, W2ru) and its parent name: to point a chain somewhere it must not go. */
export async function pointLocatorsAt(child: string, targets: { macx: string; w2ku: string; w2ru: string; name: string }): Promise<void> {
  const hbuf = await readBytes(child, 512, 1024);
  const h = decodeHeader(hbuf);
  if (typeof h === 'string') throw new Error(h);
  for (const l of h.locators) {
    let data: Buffer | undefined;
    if (l.code === 0x4d616358) data = Buffer.from(targets.macx, 'utf8');
    else if (l.code === 0x57326b75) data = Buffer.from(targets.w2ku, 'utf16le');
    else if (l.code === 0x57327275) data = Buffer.from(targets.w2ru, 'utf16le');
    if (!data) continue;
    const sector = Buffer.alloc(512);
    data.copy(sector);
    await writeBytes(child, l.dataOffset, sector);
    l.dataLength = data.length;
  }
  h.parentUnicodeName = targets.name;
  await writeBytes(child, 512, encodeHeader(h));
}
