/**
 * GC benchmark: a 10-deep chain of 100 MiB deltas collapsed to one image by
 * `sm-gc -g`, against `cp` + fsync of the same number of bytes in the same run.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { FileBackend } from '../../lib/sr/file-backend.js';
import { newSrRecord } from '../../lib/sr/metadata.js';
import { Repository } from '../../lib/sr/repository.js';
import { writeAttachRecord } from '../../lib/sr/attach-record.js';
import { createVdi } from '../../lib/sr/vdi-create.js';
import { snapshotVdi } from '../../lib/sr/snapshot.js';
import { deleteVdi } from '../../lib/sr/vdi-delete.js';
import { writeAt } from '../../lib/vhd/index.js';
import { copyBaseline, mibps, MiB, report, timed, workDir } from './measure.js';

const run = promisify(execFile);
// The bundled collector, as drivers start it.
const SM_GC = fileURLToPath(new URL('../../bundle/sm-gc.mjs', import.meta.url));
const SR = '5e1ec7ed-0000-4000-8000-0000000006cc';

export async function runGcBenchmarks(): Promise<void> {
  const { dir, cleanup } = workDir('gc');
  const saved = process.env.SM_ROOT;
  try {
    process.env.SM_ROOT = join(dir, 'root');
    const location = join(dir, 'sr');
    mkdirSync(location, { recursive: true });
    const repo = new Repository(new FileBackend(SR, location));
    await repo.records.writeSr(newSrRecord(SR, 'FileSR', 'gc-bench'));
    await writeAttachRecord(SR, 'FileSR', { kind: 'file', dir: location }, 'master');
    const vdi = await createVdi(repo, 2048 * MiB, { name_label: 'chain' });
    const delta = Buffer.alloc(100 * MiB);
    for (let layer = 0; layer < 10; layer++) {
      delta.fill(layer + 1);
      await writeAt(repo.imagePath(vdi), delta, layer * 100 * MiB);
      if (layer < 9) await deleteVdi(repo, (await snapshotVdi(repo, vdi, 'double')).snap);
    }
    const { nodes } = await repo.tree();
    const depth = repo.chainDepth(nodes, vdi);
    const gc = await timed(() => run(process.execPath, [SM_GC, '-u', SR, '-g'], { env: process.env }));
    const after = await repo.tree();
    const log = await readFile(join(process.env.SM_ROOT, 'var/log/SMlog'), 'utf8');
    const summary = log.split('\n').find((l) => l.includes('GC summary')) ?? '';
    const copied = 9 * 100 * MiB; // 8 coalesces of hidden deltas + the leaf-coalesce
    const raw = join(dir, 'same-bytes.raw');
    writeFileSync(raw, Buffer.alloc(copied, 7));
    const cp = await copyBaseline(raw, join(dir, 'copy.raw'));
    report('GC: collapse a 10-deep chain of 100 MiB deltas', [
      ['chain depth before / after', `${depth} / ${after.nodes.size}`],
      ['sm-gc -g (whole process)', `${(gc.ms / 1000).toFixed(2)} s`],
      ['cp + fsync of the same 900 MiB', `${(cp / 1000).toFixed(2)} s  ${mibps(copied, cp).toFixed(0)} MiB/s`],
      ['ratio GC / copy (goal <= 1.5)', (gc.ms / cp).toFixed(2)],
      ['GC summary line', summary.replace(/^.*SMGC: \[\d+\] /, '')],
    ]);
  } finally {
    if (saved === undefined) delete process.env.SM_ROOT;
    else process.env.SM_ROOT = saved;
    cleanup();
  }
}
