/** Small helpers shared by the benchmarks: timing, copying baselines, printing. */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const MiB = 1024 * 1024;

export async function timed<T>(fn: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = process.hrtime.bigint();
  const value = await fn();
  return { value, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
}

export function percentile(samples: number[], p: number): number {
  const s = [...samples].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

/** Drops clean page-cache pages of one file so a later read really reads (best effort). */
export function evict(path: string): void {
  try {
    execFileSync('dd', [`if=${path}`, 'iflag=nocache', 'count=0', 'status=none']);
  } catch {
    /* not fatal: figures are then warm-cache figures, stated as such */
  }
}

/** The copy baseline: `cp` then fsync of the copy, timed together. */
export async function copyBaseline(src: string, dst: string): Promise<number> {
  const { ms } = await timed(async () => {
    execFileSync('cp', ['--sparse=never', src, dst]);
    const fh = await open(dst, 'r+');
    await fh.sync();
    await fh.close();
  });
  return ms;
}

export function workDir(name: string): { dir: string; cleanup: () => void } {
  const base = process.env.BENCH_DIR ?? tmpdir();
  const dir = mkdtempSync(join(base, `sm-bench-${name}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function mibps(bytes: number, ms: number): number {
  return bytes / MiB / (ms / 1000);
}

export function report(title: string, rows: [string, string][]): void {
  console.log(`\n== ${title}`);
  const w = Math.max(...rows.map(([k]) => k.length));
  for (const [k, v] of rows) console.log(`  ${k.padEnd(w)}  ${v}`);
}
