/**
 * The main job on an embedded default: make a VHD, write data, snapshot it, write
 * more, coalesce, export the result and verify it against what was written,
 * printing each step. Runs in a fresh temp folder (or the one given as argv[2]).
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  checkChain,
  coalesceIntoParent,
  createDifferencing,
  createDynamic,
  exportRaw,
  imageInfo,
  writeAt,
} from '../vhd/index.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

const step = (msg: string) => console.log(`- ${msg}`);
const bytes = (n: number) => (n >= MiB ? `${(n / MiB).toFixed(2)} MiB` : `${(n / 1024).toFixed(1)} KiB`);
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex').slice(0, 16);

async function describe(path: string): Promise<string> {
  const i = await imageInfo(path);
  return `${i.uuid.slice(0, 8)} virtual ${i.virtualSize / MiB} MiB, file ${bytes(i.physicalSize)}, ${i.allocatedBlocks} blocks, hidden=${i.hidden ? 1 : 0}, parent=${i.parentName ?? 'none'}`;
}

async function main(): Promise<void> {
  const keep = process.argv[2] !== undefined;
  const dir = process.argv[2] ?? mkdtempSync(join(tmpdir(), 'sm-main-job-'));
  const model = Buffer.alloc(SIZE);
  const base = join(dir, 'base.vhd');
  const leaf = join(dir, 'leaf.vhd');
  try {
    console.log(`VHD main job in ${dir}`);
    await createDynamic(base, SIZE, { maxSize: 1024 * MiB });
    step(`created base.vhd: ${await describe(base)}`);

    const first = randomBytes(3 * MiB + 777);
    await writeAt(base, first, 5 * MiB + 123);
    first.copy(model, 5 * MiB + 123);
    step(`wrote ${first.length} bytes at offset ${5 * MiB + 123} (sha256 ${sha(first)})`);

    await createDifferencing(leaf, base);
    step(`snapshot leaf.vhd -> base.vhd: ${await describe(leaf)}`);

    for (const [offset, length] of [[6 * MiB + 1, 4096], [40 * MiB, 2 * MiB], [SIZE - 1000, 1000]]) {
      const data = randomBytes(length);
      await writeAt(leaf, data, offset);
      data.copy(model, offset);
      step(`wrote ${length} bytes at offset ${offset} into the leaf`);
    }
    step(`leaf now: ${await describe(leaf)}`);

    const result = await coalesceIntoParent(leaf);
    step(`coalesced leaf into base: ${result.sectors} sectors in ${result.blocks} blocks, ${result.elapsedMs} ms`);
    step(`base now: ${await describe(base)}`);

    const raw = join(dir, 'base.raw');
    await exportRaw(base, raw);
    const exported = readFileSync(raw);
    const same = exported.equals(model);
    step(`exported base.vhd to raw: sha256 ${sha(exported)}, expected ${sha(model)} -> ${same ? 'identical' : 'DIFFERENT'}`);

    const reports = [...(await checkChain(leaf, { parents: true })), ...(await checkChain(base))];
    const problems = reports.flatMap((r) => r.problems.map((p) => `${r.path}: ${p}`));
    step(problems.length ? `check found problems:\n  ${problems.join('\n  ')}` : 'check: every image is valid');

    if (!same || problems.length) {
      console.log('RESULT: FAILED');
      process.exitCode = 1;
    } else {
      console.log('RESULT: OK');
    }
  } finally {
    if (!keep) rmSync(dir, { recursive: true, force: true });
  }
}

await main();
