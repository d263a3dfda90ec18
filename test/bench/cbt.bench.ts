/**
 * Incremental backup with changed-block tracking (`npm run bench -- cbt`).
 *
 * A 1 GiB VHD whose every block holds data is snapshot 1; a differencing
 * child takes writes to 5% of its 64 KiB blocks (chosen at random, written
 * through the datapath's CbtDevice, which marks the log), and becomes
 * snapshot 2. Snapshot 2 is served over NBD by a server process of its own
 * (test/bench/nbd-serve.ts); the client reads either every byte (the full
 * copy) or only the ranges the log lists (the incremental one) onto a raw
 * file with lib/cbt's copyRanges. The two alternate over the rounds, so the
 * ratio comes from one run under the same load. The marking cost is the same
 * writes into a twin child without a log.
 */
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { allSet, changedRanges, copyRanges, countSet, createLog, rawTarget, readLog, blockCount, CBT_BLOCK_SIZE } from '../../lib/cbt/index.js';
import { CbtDevice } from '../../lib/datapath/cbt-device.js';
import { openVhdDevice } from '../../lib/datapath/vhd-device.js';
import type { BlockDevice } from '../../lib/nbd/block-device.js';
import { createDifferencing, createDynamic, VhdChain } from '../../lib/vhd/index.js';
import { MiB, mibps, percentile, report, timed, workDir } from './measure.js';

const SERVE_JS = join(dirname(fileURLToPath(import.meta.url)), 'nbd-serve.js');
const DISK = 1024 * MiB;
const CHANGED = 0.05;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);

/** Writes one 64 KiB block at each of `blocks`, 16 in flight (a guest's queue). */
async function writeBlocks(device: BlockDevice, blocks: number[], seed: number): Promise<number> {
  const data = Buffer.alloc(CBT_BLOCK_SIZE, seed);
  let next = 0;
  const { ms } = await timed(async () => {
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < blocks.length) await device.write!(data, blocks[next++] * CBT_BLOCK_SIZE);
      }),
    );
    await device.flush!();
  });
  return ms;
}

function randomBlocks(count: number, total: number): number[] {
  const picked = new Set<number>();
  let x = 12345;
  while (picked.size < count) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0; // 32-bit LCG: exact in integer arithmetic
    picked.add(x % total);
  }
  return [...picked];
}

async function serve(socket: string, name: string, leaf: string): Promise<() => Promise<void>> {
  const child = spawn(process.execPath, [SERVE_JS, socket, `${name}=${leaf}`], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
    child.once('exit', (code) => reject(new Error(`nbd-serve exited ${code}`)));
  });
  return async () => {
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await gone;
  };
}

export async function runCbtBenchmarks(): Promise<void> {
  const { dir, cleanup } = workDir('cbt');
  try {
    const base = join(dir, 'snap1.vhd');
    await createDynamic(base, DISK);
    const filled = await timed(async () => {
      const chain = await VhdChain.open(base, { writable: true });
      const chunk = Buffer.alloc(16 * MiB);
      for (let at = 0; at < DISK; at += chunk.length) {
        chunk.fill((at / chunk.length) % 251);
        await chain.write(chunk, at);
      }
      await chain.sync();
      await chain.close();
    });
    console.log(`  (snapshot 1: 1 GiB written in ${filled.ms.toFixed(0)} ms)`);
    const leaf = join(dir, 'snap2.vhd');
    const twin = join(dir, 'twin.vhd');
    await createDifferencing(leaf, base);
    await createDifferencing(twin, base);
    const log = join(dir, 'snap2.cbtlog');
    await createLog(log, DISK);

    const blocks = randomBlocks(Math.round(blockCount(DISK) * CHANGED), blockCount(DISK));
    const tracked = await CbtDevice.open(await openVhdDevice(leaf, { writable: true }), log);
    const trackedMs = await writeBlocks(tracked, blocks, 7);
    await tracked.close();
    const plain = await openVhdDevice(twin, { writable: true });
    const plainMs = await writeBlocks(plain, blocks, 7);
    await plain.close();
    console.log(`  (${blocks.length} blocks written into snapshot 2: ${trackedMs.toFixed(0)} ms with the log, ${plainMs.toFixed(0)} ms without)`);

    const bitmap = (await readLog(log)).bitmap;
    const ranges = changedRanges(bitmap, DISK);
    const socket = join(dir, 'nbd.sock');
    const stop = await serve(socket, 'snap2', leaf);
    const full: number[] = [];
    const inc: number[] = [];
    let fullBytes = 0;
    let incBytes = 0;
    try {
      for (let round = 0; round < ROUNDS; round++) {
        const sides = [
          async () => {
            const r = await copyRanges(socket, 'snap2', changedRanges(allSet(DISK), DISK), await rawTarget(join(dir, `full-${round}.raw`), DISK));
            full.push(r.ms);
            console.log(`  (round ${round}: full copy ${r.ms} ms)`);
            fullBytes = r.bytesRead;
          },
          async () => {
            const r = await copyRanges(socket, 'snap2', ranges, await rawTarget(join(dir, `inc-${round}.raw`), DISK));
            inc.push(r.ms);
            console.log(`  (round ${round}: incremental copy ${r.ms} ms)`);
            incBytes = r.bytesRead;
          },
        ];
        for (const side of round % 2 === 0 ? sides : sides.reverse()) await side();
      }
    } finally {
      await stop();
    }
    const fullMs = percentile(full, 50);
    const incMs = percentile(inc, 50);
    report(`incremental backup over NBD, 1 GiB VHD, ${(CHANGED * 100).toFixed(0)}% of its 64 KiB blocks changed (median of ${ROUNDS} alternating rounds)`, [
      ['blocks changed (listed by the log)', `${countSet(bitmap)} of ${blockCount(DISK)} (${ranges.length} ranges)`],
      ['full copy', `${(fullBytes / MiB).toFixed(1)} MiB read in ${fullMs.toFixed(0)} ms (${mibps(fullBytes, fullMs).toFixed(0)} MiB/s)`],
      ['incremental copy', `${(incBytes / MiB).toFixed(1)} MiB read in ${incMs.toFixed(0)} ms (${mibps(incBytes, incMs).toFixed(0)} MiB/s)`],
      ['bytes read, incremental / full', (incBytes / fullBytes).toFixed(4)],
      ['time, incremental / full (goal <= 0.1)', (incMs / fullMs).toFixed(3)],
      ['all rounds, full / incremental (ms)', `${full.map((m) => m.toFixed(0)).join(', ')} / ${inc.map((m) => m.toFixed(0)).join(', ')}`],
      ['64 KiB writes into new blocks, QD16: with the log / without', `${trackedMs.toFixed(0)} / ${plainMs.toFixed(0)} ms (${(trackedMs / plainMs).toFixed(2)}x)`],
    ]);
  } finally {
    cleanup();
  }
}
