/**
 * Activation records as a directory of `<vdi>.json` files, one per active VDI.
 * Each file is written (atomically) and removed only by the host that
 * activated the VDI, so hosts sharing the directory never write the same file.
 */
import { mkdir, readdir, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from './atomic-write.js';
import type { Activation } from './backend.js';
import { isUuid } from './ids.js';

export async function listActivationsIn(dir: string): Promise<Map<string, Activation>> {
  const out = new Map<string, Activation>();
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names.sort()) {
    const vdi = name.slice(0, -'.json'.length);
    if (!name.endsWith('.json') || !isUuid(vdi)) continue; // temp files of a write in progress
    const text = await readFile(join(dir, name), 'utf8').catch(() => undefined);
    if (text === undefined) continue; // removed meanwhile: no longer active
    try {
      out.set(vdi, JSON.parse(text) as Activation);
    } catch {
      // Unreadable (cannot happen with atomic writes): count it active, held by an unknown host.
      out.set(vdi, { host: 'unknown', writable: true, since: '' });
    }
  }
  return out;
}

export async function writeActivationIn(dir: string, vdi: string, activation: Activation): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, `${vdi}.json`), JSON.stringify(activation) + '\n');
}

export async function removeActivationIn(dir: string, vdi: string): Promise<void> {
  await unlink(join(dir, `${vdi}.json`)).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
}
