/** Files replaced as a whole: write beside, fsync, rename over, fsync the directory. */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rename, stat, unlink } from 'node:fs/promises';
import { dirname, join, basename } from 'node:path';

/** Called between the steps, so a crash can be injected there (fault.ts). */
export interface AtomicWriteSteps {
  /** The temp file is complete and synced, not yet renamed. */
  tempWritten?: () => void;
  /** Renamed into place, the directory not yet synced. */
  renamed?: () => void;
}

/** Temp files carry the writer's pid: `.<name>.<pid>.<random>.tmp`. */
const TEMP_NAME = /^\..+\.(\d+)\.[0-9a-f]+\.tmp$/;
/** Temp files of another naming (an older version) are removed only once this old. */
const FOREIGN_TEMP_AGE_MS = 10 * 60 * 1000;

export async function writeFileAtomic(path: string, data: string | Buffer, steps: AtomicWriteSteps = {}): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true });
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fh = await open(tmp, 'wx', 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (err) {
    await fh.close();
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fh.close();
  steps.tempWritten?.();
  await rename(tmp, path);
  steps.renamed?.();
  await syncDir(dir);
}

/**
 * Removes the temp files of atomic writes a crash left behind in `dir` (never
 * renamed into place, so never part of what the directory holds). A temp file
 * whose writer is still running is left alone. The pid test is host-local:
 * only the host that owns the SR (its master) writes these files.
 */
export async function sweepAtomicTemps(dir: string): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!/^\..+\.tmp$/.test(name)) continue;
    const pid = TEMP_NAME.exec(name)?.[1];
    const abandoned = pid !== undefined ? !isRunning(Number(pid)) : await olderThan(join(dir, name), FOREIGN_TEMP_AGE_MS);
    if (!abandoned) continue;
    await unlink(join(dir, name)).then(
      () => removed.push(name),
      () => undefined,
    );
  }
  return removed;
}

function isRunning(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function olderThan(path: string, ms: number): Promise<boolean> {
  const st = await stat(path).catch(() => undefined);
  return st !== undefined && st.mtimeMs < Date.now() - ms;
}

/** A rename or unlink is durable only once its directory is. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
