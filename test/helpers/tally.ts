// Figures of a hostile-input run, per surface: how many cases ran, how many
// got the right SM code, escapes, data lost, the slowest case and the largest
// peak RSS. Each test logs its line (ava --verbose shows it) and, when
// SM_FIGURES names a file, appends it there as one JSON line.
import fs from 'node:fs';
import type { ExecutionContext } from 'ava';

/** Bounds every hostile case must stay under (a case takes well under a second alone; the margin is for a loaded CI host). */
export const MAX_CASE_MS = 15_000;
export const MAX_PEAK_RSS_KIB = 384 * 1024;

export class Tally {
  cases = 0;
  rightCode = 0;
  escapes = 0;
  dataLost = 0;
  maxMs = 0;
  maxRssKiB = 0;

  constructor(readonly surface: string) {}

  /** One case: whether its answer had the right code, and what it cost. */
  add(rightCode: boolean, cost: { ms: number; peakRssKiB?: number }): void {
    this.cases++;
    if (rightCode) this.rightCode++;
    this.maxMs = Math.max(this.maxMs, cost.ms);
    this.maxRssKiB = Math.max(this.maxRssKiB, cost.peakRssKiB ?? 0);
  }

  report(t: ExecutionContext): void {
    const line = {
      surface: this.surface,
      cases: this.cases,
      rightCode: this.rightCode,
      escapes: this.escapes,
      dataLost: this.dataLost,
      maxMs: this.maxMs,
      maxPeakRssMiB: Math.round(this.maxRssKiB / 1024),
    };
    t.log(JSON.stringify(line));
    if (process.env.SM_FIGURES) fs.appendFileSync(process.env.SM_FIGURES, JSON.stringify(line) + '\n');
  }
}

/** Asserts the bounds on one case and records it. */
export function within(t: ExecutionContext, tally: Tally, what: string, rightCode: boolean, cost: { ms: number; peakRssKiB?: number }): void {
  t.true(cost.ms < MAX_CASE_MS, `${what}: took ${cost.ms} ms`);
  if (cost.peakRssKiB !== undefined) t.true(cost.peakRssKiB < MAX_PEAK_RSS_KIB, `${what}: peak RSS ${cost.peakRssKiB} KiB`);
  tally.add(rightCode, cost);
}

/** A seeded generator (mulberry32): the same seed gives the same cases. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/** SM_SOAK=1 runs the larger counts. */
export const soak = process.env.SM_SOAK === '1';
