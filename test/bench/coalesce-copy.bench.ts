/**
 * The coalesce's copy alone (`npm run bench -- coalescecopy`): a child of
 * BENCH_COALESCE_MIB (1024) MiB of full blocks coalesced into an empty parent,
 * its data copied inside the kernel (lib/native/copy-ranges) and through this
 * process, against `cp` + fsync of the child, alternating in one run
 * (BENCH_COALESCE_ROUNDS rounds, 3) so a drift of the host's load hits all three.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { coalesceIntoParent, createDifferencing, createDynamic, VhdImage, type BlockBuffer } from '../../lib/vhd/index.js';
import { copyBaseline, mibps, MiB, report, timed, workDir } from './measure.js';

const BLOCK = 2 * MiB;
const SIZE = Number(process.env.BENCH_COALESCE_MIB ?? 1024) * MiB;
const ROUNDS = Number(process.env.BENCH_COALESCE_ROUNDS ?? 3);

/** The child's blocks written directly, full (batmap bits set), 32 MiB at a time. */
async function fillFull(path: string): Promise<void> {
  const image = await VhdImage.open(path, true);
  try {
    for (let first = 0; first < SIZE / BLOCK; first += 16) {
      const batch: BlockBuffer[] = [];
      for (let i = first; i < Math.min(first + 16, SIZE / BLOCK); i++) batch.push({ index: i, bitmap: Buffer.alloc(image.bitmapBytes, 0xff), data: Buffer.alloc(BLOCK, (i * 31 + 7) & 0xff) });
      await image.appendBlocks(batch);
      await image.writeBatEntries(batch.map((b) => b.index));
      await image.markFull(batch.map((b) => b.index));
    }
    await image.sync();
  } finally {
    await image.close();
  }
}

export async function runCoalesceCopyBenchmark(): Promise<void> {
  const { dir, cleanup } = workDir('coalesce-copy');
  try {
    const base = join(dir, 'base.vhd');
    const empty = join(dir, 'base.empty');
    const child = join(dir, 'child.vhd');
    await createDynamic(base, SIZE);
    await createDifferencing(child, base);
    copyFileSync(base, empty); // the same parent (uuid included) before each coalesce
    await fillFull(child);
    const times = { cp: [] as number[], inKernel: [] as number[], throughProcess: [] as number[] };
    const loads: number[] = [];
    const coalesce = async (inKernel: boolean) => {
      copyFileSync(empty, base);
      execFileSync('sync');
      const { value, ms } = await timed(() => coalesceIntoParent(child, { inKernel }));
      if (value.bytesCopied !== SIZE) throw new Error(`copied ${value.bytesCopied} bytes, not ${SIZE}`);
      if (value.copiedBy !== (inKernel ? 'in-kernel' : 'this-process')) throw new Error(`data copied ${value.copiedBy}`);
      return ms;
    };
    for (let r = 0; r < ROUNDS; r++) {
      loads.push(loadavg()[0]);
      execFileSync('sync');
      times.cp.push(await copyBaseline(child, join(dir, 'copy')));
      rmSync(join(dir, 'copy'));
      times.inKernel.push(await coalesce(true));
      times.throughProcess.push(await coalesce(false));
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const row = (xs: number[]) => `${(mean(xs) / 1000).toFixed(2)} s  ${mibps(SIZE, mean(xs)).toFixed(0)} MiB/s  (${xs.map((x) => (x / 1000).toFixed(2)).join(' / ')} s)`;
    report(`coalesce copy: ${SIZE / MiB} MiB of full blocks into an empty parent, ${ROUNDS} alternating rounds, load average ${loads.map((l) => l.toFixed(1)).join(' / ')}`, [
      ['cp + fsync of the child', row(times.cp)],
      ['coalesce, data copied in the kernel', row(times.inKernel)],
      ['coalesce, data copied through this process', row(times.throughProcess)],
      ['ratio in-kernel / cp (goal >= 0.7)', (mean(times.cp) / mean(times.inKernel)).toFixed(2)],
      ['ratio through this process / cp', (mean(times.cp) / mean(times.throughProcess)).toFixed(2)],
      ['per round, in-kernel / cp', times.cp.map((c, i) => (c / times.inKernel[i]).toFixed(2)).join(' / ')],
    ]);
  } finally {
    cleanup();
  }
}
