/**
 * VHD library benchmarks: coalesce (full and sector-fragmented), chain reads,
 * create/snapshot latency. Each figure is printed beside a baseline measured in
 * the same run on the same disk.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  coalesceIntoParent,
  createDifferencing,
  createDynamic,
  VhdChain,
  VhdImage,
  type BlockBuffer,
} from '../../lib/vhd/index.js';
import { copyBaseline, mibps, MiB, percentile, report, timed, workDir } from './measure.js';

const BLOCK = 2 * MiB;
const REF_VHD_UTIL = '/tmp/ref/bin/vhd-util'; // optional local reference, never in CI

/** Fills `count` blocks of an image directly with the given bitmap pattern (fast set-up). */
async function fillBlocks(path: string, blocks: number[], bitmapByte: number, seed: number): Promise<void> {
  const image = await VhdImage.open(path, true);
  const batch: BlockBuffer[] = [];
  const flush = async () => {
    await image.appendBlocks(batch);
    await image.writeBatEntries(batch.map((b) => b.index));
    if (bitmapByte === 0xff) await image.markFull(batch.map((b) => b.index));
    batch.length = 0;
  };
  for (const index of blocks) {
    const bitmap = Buffer.alloc(image.bitmapBytes);
    bitmap.fill(bitmapByte, 0, image.sectorsPerBlock / 8);
    const data = Buffer.alloc(BLOCK, (index * 31 + seed) & 0xff);
    if (bitmapByte !== 0xff) {
      // clear-bit sectors must be zero on disk
      for (let s = 0; s < image.sectorsPerBlock; s++) {
        if (!(bitmap[s >> 3] & (0x80 >> (s & 7)))) data.fill(0, s * 512, (s + 1) * 512);
      }
    }
    batch.push({ index, bitmap, data });
    if (batch.length === 16) await flush();
  }
  await flush();
  await image.sync();
  await image.close();
}

const range = (n: number, step = 1, from = 0) => Array.from({ length: n }, (_, i) => from + i * step);

async function fullBlockCoalesce(): Promise<void> {
  const { dir, cleanup } = workDir('coalesce-full');
  try {
    const size = 1024 * MiB;
    const base = join(dir, 'base.vhd');
    const child = join(dir, 'child.vhd');
    await createDynamic(base, size);
    await createDifferencing(child, base);
    await fillBlocks(child, range(size / BLOCK), 0xff, 7);
    execFileSync('sync');
    const cp = await copyBaseline(child, join(dir, 'copy'));
    execFileSync('sync');
    const { value, ms } = await timed(() => coalesceIntoParent(child));
    const rows: [string, string][] = [
      ['cp + fsync of the 1 GiB child', `${ms2s(cp)}  ${mibps(size, cp).toFixed(0)} MiB/s`],
      ['coalesce 1 GiB of full blocks', `${ms2s(ms)}  ${mibps(value.bytesCopied, ms).toFixed(0)} MiB/s`],
      ['ratio coalesce / copy (goal >= 0.7)', (mibps(value.bytesCopied, ms) / mibps(size, cp)).toFixed(2)],
    ];
    if (existsSync(REF_VHD_UTIL)) {
      const base2 = join(dir, 'rbase.vhd');
      const child2 = join(dir, 'rchild.vhd');
      await createDynamic(base2, size);
      await createDifferencing(child2, base2);
      await fillBlocks(child2, range(size / BLOCK), 0xff, 7);
      execFileSync('sync');
      const ref = await timed(async () => execFileSync(REF_VHD_UTIL, ['coalesce', '-n', child2]));
      rows.push(['reference vhd-util coalesce (local only)', `${ms2s(ref.ms)}  ${mibps(size, ref.ms).toFixed(0)} MiB/s`]);
    }
    report('coalesce, full blocks (1 GiB child into an empty parent)', rows);
  } finally {
    cleanup();
  }
}

async function fragmentedCoalesce(): Promise<void> {
  const { dir, cleanup } = workDir('coalesce-frag');
  try {
    const size = 128 * MiB;
    const base = join(dir, 'base.vhd');
    const child = join(dir, 'child.vhd');
    await createDynamic(base, size);
    await fillBlocks(base, range(size / BLOCK, 2), 0xff, 3); // half the parent's blocks exist
    await createDifferencing(child, base);
    await fillBlocks(child, range(size / BLOCK), 0xaa, 9); // every other sector
    execFileSync('sync');
    const { value, ms } = await timed(() => coalesceIntoParent(child));
    const rows: [string, string][] = [
      ['sectors copied', `${value.sectors} (${(value.bytesCopied / MiB).toFixed(0)} MiB of a 128 MiB child)`],
      ['coalesce time', ms2s(ms)],
      ['throughput over the child (goal >= 100 MiB/s)', `${mibps(size, ms).toFixed(0)} MiB/s`],
    ];
    if (existsSync(REF_VHD_UTIL)) {
      const base2 = join(dir, 'rbase.vhd');
      const child2 = join(dir, 'rchild.vhd');
      await createDynamic(base2, size);
      await fillBlocks(base2, range(size / BLOCK, 2), 0xff, 3);
      await createDifferencing(child2, base2);
      await fillBlocks(child2, range(8), 0xaa, 9); // 16 MiB only: the reference is slow here
      const ref = await timed(async () => execFileSync(REF_VHD_UTIL, ['coalesce', '-n', child2]));
      rows.push(['reference vhd-util on 16 MiB of it (local only)', `${ms2s(ref.ms)}  ${mibps(16 * MiB, ref.ms).toFixed(1)} MiB/s`]);
    }
    report('coalesce, sector-fragmented (every other sector written)', rows);
  } finally {
    cleanup();
  }
}

async function readAll(path: string, size: number): Promise<number> {
  const chain = await VhdChain.open(path);
  const buf = Buffer.alloc(4 * MiB);
  const { ms } = await timed(async () => {
    for (let pos = 0; pos < size; pos += buf.length) await chain.read(buf, pos);
  });
  await chain.close();
  return ms;
}

async function deepChainRead(): Promise<void> {
  const { dir, cleanup } = workDir('chain-read');
  try {
    const size = 1024 * MiB;
    const blocks = size / BLOCK;
    const flat = join(dir, 'flat.vhd');
    await createDynamic(flat, size);
    await fillBlocks(flat, range(blocks), 0xff, 1);
    // 30 images: a full base, then 29 deltas each overwriting every 29th block.
    let prev = join(dir, 'c00.vhd');
    await createDynamic(prev, size);
    await fillBlocks(prev, range(blocks), 0xff, 1);
    for (let d = 1; d < 30; d++) {
      const next = join(dir, `c${String(d).padStart(2, '0')}.vhd`);
      await createDifferencing(next, prev);
      await fillBlocks(next, range(Math.ceil((blocks - (d - 1)) / 29), 29, d - 1), 0xff, d);
      prev = next;
    }
    // Same cache state for both: read each once to warm, then time.
    await readAll(flat, size);
    await readAll(prev, size);
    const flatMs = await readAll(flat, size);
    const deepMs = await readAll(prev, size);
    report('read 1 GiB (page cache warm for both)', [
      ['flat image', `${ms2s(flatMs)}  ${mibps(size, flatMs).toFixed(0)} MiB/s`],
      ['30-deep chain', `${ms2s(deepMs)}  ${mibps(size, deepMs).toFixed(0)} MiB/s`],
      ['ratio deep / flat (goal >= 0.5)', (flatMs / deepMs).toFixed(2)],
    ]);
  } finally {
    cleanup();
  }
}

async function createLatency(): Promise<void> {
  const { dir, cleanup } = workDir('latency');
  try {
    const creates: number[] = [];
    const snaps: number[] = [];
    for (let i = 0; i < 200; i++) {
      const base = join(dir, `b${i}.vhd`);
      creates.push((await timed(() => createDynamic(base, 10 * 1024 * MiB, { maxSize: 64 * 1024 * MiB }))).ms);
      snaps.push((await timed(() => createDifferencing(join(dir, `s${i}.vhd`), base))).ms);
    }
    const rows: [string, string][] = [
      ['create 10 GiB (BAT room for 64 GiB) p50 / p95', `${percentile(creates, 50).toFixed(2)} / ${percentile(creates, 95).toFixed(2)} ms`],
      ['snapshot p50 / p95', `${percentile(snaps, 50).toFixed(2)} / ${percentile(snaps, 95).toFixed(2)} ms`],
    ];
    if (existsSync(REF_VHD_UTIL)) {
      const rc: number[] = [];
      const rs: number[] = [];
      for (let i = 0; i < 50; i++) {
        const base = join(dir, `rb${i}.vhd`);
        rc.push((await timed(async () => execFileSync(REF_VHD_UTIL, ['create', '-n', base, '-s', '10240', '-S', '65536']))).ms);
        rs.push((await timed(async () => execFileSync(REF_VHD_UTIL, ['snapshot', '-n', join(dir, `rs${i}.vhd`), '-p', base]))).ms);
      }
      rows.push(['reference vhd-util CLI create / snapshot p50 (local only)', `${percentile(rc, 50).toFixed(2)} / ${percentile(rs, 50).toFixed(2)} ms`]);
    }
    report('create and snapshot latency, in-process', rows);
  } finally {
    cleanup();
  }
}

function ms2s(ms: number): string {
  return `${(ms / 1000).toFixed(3)} s`;
}

export async function runVhdBenchmarks(): Promise<void> {
  await fullBlockCoalesce();
  await fragmentedCoalesce();
  await deepChainRead();
  await createLatency();
}

