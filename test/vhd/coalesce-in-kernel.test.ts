/**
 * The coalesce's data copied inside the kernel (lib/native/copy-ranges, built
 * by `npm run build`) against the copy through this process: the same parent,
 * byte for byte; the program's own refusals (a source that ends early, a
 * filesystem pair the kernel will not copy between); and what happens when
 * the program is missing or fails (the copy through this process, or an error
 * with both images still valid and a re-run that completes).
 */
import test from 'ava';
import { chmod, copyFile, mkdir, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { copyRanges, copyRangesProgram, CopyRangesError } from '../../lib/native/copy-ranges.js';
import { coalesceIntoParent, createDifferencing, createDynamic, VhdImage } from '../../lib/vhd/index.js';
import { assertChainValid, assertSameBytes, BLOCK, ByteModel, firstDiff, MiB, qemuImg, readChain, Rng, runCli, SECTOR, withTempDir, writeAll } from './helpers.js';

const SPB = BLOCK / SECTOR;

/**
 * base (16 MiB: block 0 full, block 1 partly) <- child holding: every other
 * sector of blocks 0 and 1 (the parent has them: merged in place, block 1's
 * bitmap gains bits) and 3 (new to the parent), a
 * few odd runs, block 6 whole (a full block) and, in block 3, bytes under a
 * clear bit (what a torn write leaves: they must reach the parent as zeros).
 */
async function chainWithEveryKindOfBlock(dir: string): Promise<{ base: string; child: string; model: ByteModel }> {
  const rng = new Rng(11);
  const base = join(dir, 'base.vhd');
  const child = join(dir, 'child.vhd');
  const model = new ByteModel(16 * MiB);
  await createDynamic(base, 16 * MiB);
  await writeAll(base, model, [[0, rng.bytes(BLOCK)], [BLOCK + 1000, rng.bytes(300 * 1024)]]);
  await createDifferencing(child, base);
  const alternate: [number, Buffer][] = [];
  for (const b of [0, 1, 3]) for (let s = 0; s < SPB; s += 2) alternate.push([b * BLOCK + s * SECTOR, rng.bytes(SECTOR)]);
  await writeAll(child, model, [...alternate, [BLOCK + 7 * SECTOR + 3, rng.bytes(5)], [4 * BLOCK + 12345, rng.bytes(1)], [6 * BLOCK, rng.bytes(BLOCK)]]);
  const img = await VhdImage.open(child, true);
  try {
    await img.writeData(3, 1 * SECTOR, Buffer.alloc(SECTOR, 0xee)); // sector 1 of block 3: its bit stays clear
  } finally {
    await img.close();
  }
  return { base, child, model };
}

test('the in-kernel copy and the copy through this process leave byte-identical parents, which qemu-img and sm-vhd check accept', async (t) => {
  t.truthy(copyRangesProgram(), 'npm run build compiled dist/native/copy-ranges (gcc is installed by npm run setup)');
  await withTempDir(async (dir) => {
    const { base, child, model } = await chainWithEveryKindOfBlock(dir);
    const other = join(dir, 'other');
    await mkdir(other);
    // The same starting bytes in both places (uuids and timestamps included).
    await copyFile(base, join(other, 'base.vhd'));
    await copyFile(child, join(other, 'child.vhd'));

    const inKernel = await coalesceIntoParent(child, { batchBytes: 2 * BLOCK }); // several batches
    const throughProcess = await coalesceIntoParent(join(other, 'child.vhd'), { inKernel: false, batchBytes: 2 * BLOCK });
    t.is(inKernel.copiedBy, 'in-kernel');
    t.is(throughProcess.copiedBy, 'this-process');
    t.is(inKernel.sectors, throughProcess.sectors);

    assertSameBytes(t, await readChain(base), model.buf, 'the parent alone reads as the chain did (zeros under the clear bit)');
    const mine = await readFile(base);
    const theirs = await readFile(join(other, 'base.vhd'));
    t.true(mine.equals(theirs), `the two parents are the same file, byte for byte (first difference at ${firstDiff(mine, theirs)} of ${mine.length} / ${theirs.length})`);
    t.is(qemuImg(['compare', '-f', 'vpc', '-F', 'vpc', base, join(other, 'base.vhd')]).trim(), 'Images are identical.');
    for (const p of [base, join(other, 'base.vhd')]) {
      const r = await runCli(['check', '-n', p]);
      t.is(r.code, 0, `sm-vhd check ${p}: ${r.stdout}${r.stderr}`);
    }
    await assertChainValid(t, base); // the child is not clean on purpose: the bytes under its clear bit
  });
});

test('a copy with many batches and blocks the parent lacks and has: the second run changes nothing', async (t) => {
  await withTempDir(async (dir) => {
    const { base, child, model } = await chainWithEveryKindOfBlock(dir);
    await coalesceIntoParent(child, { batchBytes: 1 });
    const once = await readFile(base);
    const again = await coalesceIntoParent(child, { batchBytes: 1 });
    t.is(again.copiedBy, 'in-kernel');
    t.true((await readFile(base)).equals(once), 'idempotent: the crash-safety argument of the copy');
    assertSameBytes(t, await readChain(base), model.buf, 'parent alone');
  });
});

test('the program copies every range whole, and fails (never a partial success) when the source ends early', async (t) => {
  const program = copyRangesProgram()!;
  await withTempDir(async (dir) => {
    const rng = new Rng(5);
    const bytes = rng.bytes(3 * MiB + 77);
    await writeFile(join(dir, 'src'), bytes);
    await writeFile(join(dir, 'dst'), Buffer.alloc(0));
    const src = await open(join(dir, 'src'), 'r');
    const dst = await open(join(dir, 'dst'), 'r+');
    try {
      const method = await copyRanges(program, src.fd, dst.fd, [
        { src: 0, dst: 4096, length: 2 * MiB },
        { src: 2 * MiB, dst: 0, length: 4096 },
        { src: 2 * MiB + 4096, dst: 2 * MiB + 4096, length: MiB + 77 - 4096 },
      ]);
      t.is(method, 'in-kernel');
      const out = Buffer.alloc(3 * MiB + 77);
      await dst.read(out, 0, out.length, 0);
      t.true(out.subarray(4096, 4096 + 2 * MiB).equals(bytes.subarray(0, 2 * MiB)));
      t.true(out.subarray(0, 4096).equals(bytes.subarray(2 * MiB, 2 * MiB + 4096)));
      t.true(out.subarray(2 * MiB + 4096).equals(bytes.subarray(2 * MiB + 4096)));
      const err = await t.throwsAsync(copyRanges(program, src.fd, dst.fd, [{ src: 3 * MiB, dst: 0, length: 4096 }]));
      t.true(err instanceof CopyRangesError, String(err));
      t.regex(err!.message, /source ends at \d+, \d+ bytes short/);
    } finally {
      await src.close();
      await dst.close();
    }
  });
});

test('between filesystems the kernel will not copy across, the program copies through its own buffer, the same bytes', async (t) => {
  const program = copyRangesProgram()!;
  const shm = await stat('/dev/shm').catch(() => undefined);
  await withTempDir(async (dir) => {
    const elsewhere = shm ? await mkdtemp('/dev/shm/copy-ranges-') : dir;
    try {
      const bytes = new Rng(9).bytes(MiB + 512);
      await writeFile(join(elsewhere, 'src'), bytes);
      await writeFile(join(dir, 'dst'), Buffer.alloc(0));
      const src = await open(join(elsewhere, 'src'), 'r');
      const dst = await open(join(dir, 'dst'), 'r+');
      try {
        const method = await copyRanges(program, src.fd, dst.fd, [{ src: 0, dst: 0, length: bytes.length }]);
        const crossDevice = (await src.stat()).dev !== (await dst.stat()).dev;
        t.log(`source on ${crossDevice ? 'another' : 'the same'} filesystem: copied ${method}`);
        // Linux >= 5.19 refuses copy_file_range between different filesystems (EXDEV) unless one driver does both.
        t.is(method, crossDevice ? 'buffered' : 'in-kernel');
        const out = Buffer.alloc(bytes.length);
        await dst.read(out, 0, out.length, 0);
        t.true(out.equals(bytes));
      } finally {
        await src.close();
        await dst.close();
      }
    } finally {
      if (elsewhere !== dir) await rm(elsewhere, { recursive: true, force: true });
    }
  });
});

/** A stand-in for the program (a shell script written here) that fails or lies, to show the copy never takes it for success. */
async function standIn(dir: string, body: string): Promise<string> {
  const path = join(dir, 'copy-ranges-stand-in');
  // An empty list (the once-per-process check that the program runs) is answered as the real one does.
  await writeFile(path, `#!/bin/sh\n[ -z "$(cat)" ] && { echo "copied 0 in-kernel"; exit 0; }\n${body}\n`);
  await chmod(path, 0o755);
  return path;
}

test.serial('a program that fails, or reports fewer bytes than asked, fails the coalesce with both images valid; a re-run completes it', async (t) => {
  await withTempDir(async (dir) => {
    const { base, child, model } = await chainWithEveryKindOfBlock(dir);
    const saved = process.env.SM_COPY_RANGES;
    try {
      for (const body of ['echo "copy-ranges: copy_file_range at 0: Input/output error" >&2; exit 1', 'echo "copied 4096 in-kernel"; exit 0', 'kill -9 $$']) {
        process.env.SM_COPY_RANGES = await standIn(dir, body);
        const err = await t.throwsAsync(coalesceIntoParent(child));
        t.true(err instanceof CopyRangesError, `${body}: ${String(err)}`);
        await assertChainValid(t, base); // the child is not clean on purpose: the bytes under its clear bit
        assertSameBytes(t, await readChain(child), model.buf, `the chain still reads the same after: ${body}`);
      }
    } finally {
      if (saved === undefined) delete process.env.SM_COPY_RANGES;
      else process.env.SM_COPY_RANGES = saved;
    }
    const r = await coalesceIntoParent(child);
    t.is(r.copiedBy, 'in-kernel');
    assertSameBytes(t, await readChain(base), model.buf, 'the re-run completes the parent');
    await assertChainValid(t, base); // the child is not clean on purpose: the bytes under its clear bit
  });
});

test.serial('without the program the data is copied through this process, said once per process', async (t) => {
  await withTempDir(async (dir) => {
    const { base, child, model } = await chainWithEveryKindOfBlock(dir);
    const saved = process.env.SM_COPY_RANGES;
    const notices: string[] = [];
    try {
      process.env.SM_COPY_RANGES = join(dir, 'no-such-program');
      t.is(copyRangesProgram(), undefined);
      const r1 = await coalesceIntoParent(child, { onNotice: (m) => notices.push(m) });
      const r2 = await coalesceIntoParent(child, { onNotice: (m) => notices.push(m) });
      t.is(r1.copiedBy, 'this-process');
      t.is(r2.copiedBy, 'this-process');
    } finally {
      if (saved === undefined) delete process.env.SM_COPY_RANGES;
      else process.env.SM_COPY_RANGES = saved;
    }
    t.is(notices.length, 1, notices.join(' | '));
    t.regex(notices[0], /copy-ranges program is not built/);
    assertSameBytes(t, await readChain(base), model.buf, 'parent alone');
  });
});
