/**
 * What a verb waits for while the GC works: vdi_create through a `--serve`
 * driver, before and during a leaf-coalesce of a 1 GiB leaf whose copy is
 * capped (SM_GC_MAX_MIBPS), in the same run. The copy runs without the SR lock,
 * so the figure during it should stay near the idle one.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { callUnixSocket } from '../../lib/smapi/index.js';
import { writeAttachRecord } from '../../lib/sr/attach-record.js';
import { FileBackend } from '../../lib/sr/file-backend.js';
import { newSrRecord } from '../../lib/sr/metadata.js';
import { Repository } from '../../lib/sr/repository.js';
import { snapshotVdi } from '../../lib/sr/snapshot.js';
import { createVdi } from '../../lib/sr/vdi-create.js';
import { deleteVdi } from '../../lib/sr/vdi-delete.js';
import { writeAt } from '../../lib/vhd/index.js';
import { MiB, percentile, report, timed, workDir } from './measure.js';

const FILE_SR = fileURLToPath(new URL('../../../drivers/FileSR', import.meta.url));
const SM_GC = fileURLToPath(new URL('../../bundle/sm-gc.mjs', import.meta.url));
const SR = '5e1ec7ed-0000-4000-8000-00000000a7c1';
const CAP_MIBPS = 128;

export async function runLockWaitBenchmarks(): Promise<void> {
  const { dir, cleanup } = workDir('lock-wait');
  const env = { ...process.env, SM_ROOT: join(dir, 'root'), SM_GC: 'off' };
  const saved = process.env.SM_ROOT;
  process.env.SM_ROOT = env.SM_ROOT;
  const socket = join(dir, 'sm.sock');
  const server = spawn(FILE_SR, ['--serve', socket], { env, stdio: 'ignore' });
  try {
    const location = join(dir, 'sr');
    mkdirSync(location, { recursive: true });
    const repo = new Repository(new FileBackend(SR, location));
    await repo.records.writeSr(newSrRecord(SR, 'FileSR', 'lock-wait-bench'));
    await writeAttachRecord(SR, 'FileSR', { kind: 'file', dir: location }, 'master');
    // A 1 GiB leaf alone under its base copy: the leaf-coalesce copies 1 GiB.
    const vdi = await createVdi(repo, 1024 * MiB, { name_label: 'leaf' });
    await deleteVdi(repo, (await snapshotVdi(repo, vdi, 'double')).snap);
    const chunk = Buffer.alloc(64 * MiB, 9);
    for (let at = 0; at < 1024 * MiB; at += chunk.length) await writeAt(repo.imagePath(vdi), chunk, at);

    for (let i = 0; i < 100 && !(await callUnixSocket(socket, 'sr_get_driver_info', { command: 'sr_get_driver_info', host_ref: 'x' }).catch(() => undefined)); i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const create = async () => {
      const params = { host_ref: 'OpaqueRef:bench', command: 'vdi_create', args: [String(16 * MiB), 'probe'], device_config: { SRmaster: 'true', location }, sr_uuid: SR };
      const reply = (await callUnixSocket(socket, 'vdi_create', params)) as { error?: { message: string } };
      if (reply.error) throw new Error(reply.error.message);
    };
    const sample = async (n: number, until?: () => boolean) => {
      const ms: number[] = [];
      for (let i = 0; i < n && (!until || !until()); i++) ms.push((await timed(create)).ms);
      return ms;
    };
    const idle = await sample(20);
    const gc = spawn(process.execPath, [SM_GC, '-u', SR, '-g'], { env: { ...env, SM_GC_MAX_MIBPS: String(CAP_MIBPS) }, stdio: 'ignore' });
    let gcDone = false;
    const exited = new Promise<void>((r) => gc.once('exit', () => ((gcDone = true), r())));
    const smlog = join(env.SM_ROOT, 'var/log/SMlog');
    while (!readFileSync(smlog, 'utf8').includes('Leaf-coalescing')) await new Promise((r) => setTimeout(r, 20));
    const copyDone = () => gcDone || /Leaf-coalesce of \w+: copied/.test(readFileSync(smlog, 'utf8'));
    const during = await sample(1000, copyDone);
    await exited;
    const fmt = (s: number[]) => `p50 ${percentile(s, 50).toFixed(1)} ms, max ${Math.max(...s).toFixed(1)} ms (${s.length} calls)`;
    report(`Lock wait: vdi_create during a leaf-coalesce of 1 GiB capped at ${CAP_MIBPS} MiB/s`, [
      ['vdi_create, GC idle', fmt(idle)],
      ['vdi_create, during the copy', fmt(during)],
      ['ratio of p50 during / idle', (percentile(during, 50) / percentile(idle, 50)).toFixed(2)],
      ['leaf-coalesce done', /Leaf-coalesce done/.test(readFileSync(smlog, 'utf8')) ? 'yes' : 'no'],
    ]);
  } finally {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
    if (saved === undefined) delete process.env.SM_ROOT;
    else process.env.SM_ROOT = saved;
    cleanup();
  }
}
