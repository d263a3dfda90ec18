/** Files replaced as a whole: write beside, fsync, rename over, fsync the directory. */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join, basename } from 'node:path';

export interface AtomicWriteOptions {
  /**
   * The new content becomes visible only after this resolves (and never if it
   * rejects). The temp file is written and synced meanwhile, so a commit that
   * must follow a barrier costs one fsync round after it, not two.
   */
  after?: Promise<unknown>;
  // Called between the steps, so a crash can be injected there (fault.ts).
  /** The temp file is complete and synced, not yet renamed. */
  tempWritten?: () => void;
  /** Renamed into place, the directory not yet synced. */
  renamed?: () => void;
}

/** Temp files carry the writer's pid: `.<name>.<pid>.<random>.tmp`. */
const TEMP_NAME = /^\..+\.(\d+)\.[0-9a-f]+\.tmp$/;
/** Temp files of another naming (an older version) are removed only once this old. */
const FOREIGN_TEMP_AGE_MS = 10 * 60 * 1000;

export async function writeFileAtomic(path: string, data: string | Buffer, opts: AtomicWriteOptions = {}): Promise<void> {
  await writeFilesAtomic(dirname(path), [[basename(path), data]], opts);
}

/**
 * Several files of one folder, each replaced atomically, renamed into place in
 * the order given after all are staged (one fsync round for the folder). With
 * `tempDir`, the temp files are staged there (on the same file system), so a
 * sweep of that one folder finds what a crash left, however many files `dir` holds.
 */
export async function writeFilesAtomic(
  dir: string,
  files: ReadonlyArray<readonly [name: string, data: string | Buffer]>,
  opts: AtomicWriteOptions & { tempDir?: string } = {},
): Promise<void> {
  const tempDir = opts.tempDir ?? dir;
  const temps = files.map(([name]) => join(tempDir, `.${name}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`));
  const staged = Promise.all(files.map(([, data], i) => stageFile(temps[i]!, data)));
  // Both settle before anything is decided, so no rejection is left unobserved.
  const [stagedResult, afterResult] = await Promise.allSettled([staged, opts.after]);
  if (stagedResult.status === 'rejected' || afterResult.status === 'rejected') {
    await Promise.all(temps.map((t) => unlink(t).catch(() => undefined)));
    throw stagedResult.status === 'rejected' ? stagedResult.reason : (afterResult as PromiseRejectedResult).reason;
  }
  opts.tempWritten?.();
  for (const [i, [name]] of files.entries()) await rename(temps[i]!, join(dir, name));
  opts.renamed?.();
  await syncDir(dir);
}

async function stageFile(tmp: string, data: string | Buffer): Promise<void> {
  const fh = await openNew(tmp);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Creates a file that must not exist yet, durably, in one fsync round (file
 * and directory synced together). A crash before it returns may leave it torn,
 * so callers use it only where a torn file means "never happened" (a journal
 * is written before its change starts). Returns false if the file exists.
 */
export async function createFileDurably(path: string, data: string | Buffer): Promise<boolean> {
  let fh;
  try {
    fh = await openNew(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  try {
    await fh.writeFile(data);
    await Promise.all([fh.sync(), syncDir(dirname(path))]);
  } finally {
    await fh.close();
  }
  return true;
}

/** Creates a new file, and its folder when missing (the new folder's entry synced too). */
async function openNew(path: string): Promise<FileHandle> {
  try {
    return await open(path, 'wx', 0o644);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const made = await mkdir(dirname(path), { recursive: true });
  // Every folder made, from the file's up to the first one, must be durable with the file.
  for (let dir = dirname(path); made && dir.length >= made.length; dir = dirname(dir)) await syncDir(dirname(dir));
  return open(path, 'wx', 0o644);
}

/**
 * Removes the temp files of atomic writes a crash left behind in `dir` (never
 * renamed into place, so never part of what the directory holds). A temp file
 * whose writer is still running is left alone. The pid test is host-local:
 * `byAge` for folders several hosts write (only old temp files go).
 */
export async function sweepAtomicTemps(dir: string, opts: { byAge?: boolean } = {}): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!/^\..+\.tmp$/.test(name)) continue;
    const pid = opts.byAge ? undefined : TEMP_NAME.exec(name)?.[1];
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
