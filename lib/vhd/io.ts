/**
 * Positional I/O: the only way the VHD library touches storage, so the same code
 * runs over a regular file and over a block device (an LVM logical volume).
 */
import { open, constants, stat } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { VhdError } from './errors.js';

export interface PositionalIO {
  readonly path: string;
  readonly writable: boolean;
  /**
   * A block device (an LV): its size is fixed by the volume, the primary footer
   * sits in its last sector, and data grows inside it up to that footer.
   */
  readonly isDevice: boolean;
  /** Fills `buf` from `position`; throws if the storage ends first. */
  read(buf: Buffer, position: number): Promise<void>;
  /** Writes the buffers back to back starting at `position`. */
  write(bufs: Buffer | Buffer[], position: number): Promise<void>;
  size(): Promise<number>;
  /** Shrinks or grows a file; a device keeps its size. */
  truncate(size: number): Promise<void>;
  sync(): Promise<void>;
  /**
   * fdatasync: the data and what reading it back needs (the size), not the
   * timestamps, so a file only overwritten in place costs no journal commit
   * (which on ext4 also waits for other files' ordered data). Absent: sync().
   */
  datasync?(): Promise<void>;
  /**
   * The open descriptor of a regular file, for a copy another process makes
   * between two open files (lib/native/copy-ranges); absent for a device or
   * storage that is not a local descriptor. Writes through it bypass nothing
   * here: the caller keeps the same ordering and barriers as for write().
   */
  readonly fd?: number;
  close(): Promise<void>;
}

/** A regular file (or a block device node) opened through fs/promises. */
export class FileIO implements PositionalIO {
  /** Set by seal(): this handle writes nothing more. */
  private sealed = false;

  private constructor(
    private where: string,
    readonly writable: boolean,
    private readonly fh: FileHandle,
    readonly isDevice: boolean,
    /** Which file this handle holds, `dev:ino`: it survives a rename, and fileIdentity() of any path naming the file equals it. */
    readonly identity: string,
  ) {}

  get path(): string {
    return this.where;
  }

  get fd(): number | undefined {
    return this.isDevice || this.sealed ? undefined : this.fh.fd;
  }

  /**
   * The file was renamed to `path` while open (the handle is still the same
   * file): later messages and parent lookups use the name it has now.
   */
  renamedTo(path: string): void {
    this.where = path;
  }

  /**
   * No write or truncate through this handle from now on (they throw): an
   * image someone else now owns the writes of, kept open only to be read.
   */
  seal(): void {
    this.sealed = true;
  }


  static async open(path: string, writable: boolean): Promise<FileIO> {
    let fh: FileHandle;
    try {
      fh = await open(path, writable ? constants.O_RDWR : constants.O_RDONLY);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new VhdError('not-found', 'no such file', path);
      throw err;
    }
    const st = await fh.stat({ bigint: true });
    return new FileIO(path, writable, fh, st.isBlockDevice(), `${st.dev}:${st.ino}`);
  }

  /**
   * Creates a new file; fails if it exists, so nothing is ever overwritten by
   * accident. A block device (an LV made for the image) is opened instead.
   */
  static async create(path: string): Promise<FileIO> {
    try {
      const fh = await open(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o644);
      const st = await fh.stat({ bigint: true });
      return new FileIO(path, true, fh, false, `${st.dev}:${st.ino}`);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || !(await stat(path)).isBlockDevice()) throw err;
      return FileIO.open(path, true);
    }
  }

  async read(buf: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.fh.read(buf, done, buf.length - done, position + done);
      if (bytesRead === 0) {
        throw new VhdError('corrupt', `short read at offset ${position + done} (wanted ${buf.length - done} more bytes)`, this.path);
      }
      done += bytesRead;
    }
  }

  async write(bufs: Buffer | Buffer[], position: number): Promise<void> {
    this.refuseSealed();
    const list = Array.isArray(bufs) ? bufs : [bufs];
    let total = 0;
    for (const b of list) total += b.length;
    let written = 0;
    let pending = list;
    while (written < total) {
      const { bytesWritten } = await this.fh.writev(pending, position + written);
      written += bytesWritten;
      if (written < total) pending = skipBytes(list, written);
    }
  }

  async size(): Promise<number> {
    if (this.isDevice) return deviceSize(this.fh);
    return (await this.fh.stat()).size;
  }

  async truncate(size: number): Promise<void> {
    this.refuseSealed();
    if (!this.isDevice) await this.fh.truncate(size);
  }

  async sync(): Promise<void> {
    await this.fh.sync();
  }

  async datasync(): Promise<void> {
    await this.fh.datasync();
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  private refuseSealed(): void {
    if (this.sealed) throw new VhdError('invalid-argument', 'image sealed read-only: it is no longer written through this handle', this.where);
  }
}

/** `dev:ino` of the file at `path` (links followed), as FileIO.identity has it; undefined if there is none. */
export async function fileIdentity(path: string): Promise<string | undefined> {
  const st = await stat(path, { bigint: true }).catch(() => undefined);
  return st ? `${st.dev}:${st.ino}` : undefined;
}

function skipBytes(list: Buffer[], skip: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of list) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}

/** A block device's size is not in stat(); read it by reading its end. */
async function deviceSize(fh: FileHandle): Promise<number> {
  return deviceSizeOf((await fh.stat()).rdev);
}

/** The size of the block device with this rdev (from stat()). */
export async function deviceSizeOf(rdev: number): Promise<number> {
  // Binary search on readable offsets would be slow; lseek(SEEK_END) is not in fs/promises,
  // so ask sysfs through the device's rdev when available.
  const [major, minor] = splitDev(rdev);
  const s = await stat(`/sys/dev/block/${major}:${minor}/size`).catch(() => undefined);
  if (!s) throw new Error('cannot determine block device size');
  const { readFile } = await import('node:fs/promises');
  const sectors = Number((await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim());
  return sectors * 512;
}

/**
 * Major and minor of a Linux dev_t (glibc's encoding: minor bits 0-7 and 20-31,
 * major bits 8-19). Minors >= 256 are common for device-mapper (one per LV).
 */
export function splitDev(rdev: number): [number, number] {
  const major = Math.floor(rdev / 0x100) & 0xfff;
  const minor = (rdev & 0xff) | (Math.floor(rdev / 0x1000) & 0xfff00);
  return [major, minor];
}

export async function openFile(path: string, writable = false): Promise<FileIO> {
  return FileIO.open(path, writable);
}
