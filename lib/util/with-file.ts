/** Runs `fn` with `path` opened (read-only, or read-write with `write`), closing it whatever happens. */
import { open, type FileHandle } from 'node:fs/promises';

export async function withFile<T>(path: string, write: boolean, fn: (fh: FileHandle) => Promise<T>): Promise<T> {
  const fh = await open(path, write ? 'r+' : 'r');
  try {
    return await fn(fh);
  } finally {
    await fh.close();
  }
}
