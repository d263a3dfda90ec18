/** Files replaced as a whole: write beside, fsync, rename over, fsync the directory. */
import { randomBytes } from 'node:crypto';
import { mkdir, open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join, basename } from 'node:path';

export interface AtomicWriteOptions {
  /**
   * The new content becomes visible only after this resolves (and never if it
   * rejects). The temp file is written and synced meanwhile, so a commit that
   * must follow a barrier costs one fsync round after it, not two.
   */
  after?: Promise<unknown>;
}

export async function writeFileAtomic(path: string, data: string | Buffer, opts: AtomicWriteOptions = {}): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
  const staged = stageFile(tmp, data);
  // Both settle before anything is decided, so no rejection is left unobserved.
  const [stagedResult, afterResult] = await Promise.allSettled([staged, opts.after]);
  if (stagedResult.status === 'rejected' || afterResult.status === 'rejected') {
    await unlink(tmp).catch(() => undefined);
    throw stagedResult.status === 'rejected' ? stagedResult.reason : (afterResult as PromiseRejectedResult).reason;
  }
  await rename(tmp, path);
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

/** A rename or unlink is durable only once its directory is. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
