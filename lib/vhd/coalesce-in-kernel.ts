/**
 * The coalesce's data copy made inside the kernel: a batch of child blocks
 * goes to the parent as byte ranges between the two open files, in one run of
 * lib/native/copy-ranges, while the bitmaps, the footer and (after the
 * caller's barrier) the BAT are written here as for the copy through this
 * process.
 */
import { fstatSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { CopyMethod, copyRanges, copyRangesProgram, CopyRange, StartedCopy } from '../native/copy-ranges.js';
import type { VhdImage } from './image.js';

/** One child block to copy: which runs of its data, and the parent bitmap it gets. */
export interface RangedBlock {
  index: number;
  /** The parent's bitmap once copied (a new block: the child's). */
  bitmap: Buffer;
  /** A block the parent does not have yet: appended (its clear sectors read as zeros). */
  fresh: boolean;
  /** Runs of the child's data: its file offset, where it goes in the block, how long. */
  copies: { src: number; at: number; length: number }[];
}

let toldWhyNot = false;

/**
 * The in-kernel copy from `child` into `parent`, when both are regular files
 * open here and the program is built; undefined otherwise (the caller copies
 * through this process; a missing program is told once per process).
 */
export function inKernelCopyBetween(child: VhdImage, parent: VhdImage, onNotice?: (message: string) => void, prepared?: PreparedInKernelCopy): InKernelCopy | undefined {
  const src = child.io.fd;
  // A file only (a device's free space is not zeros, and the kernel copies between files).
  const dst = parent.io.writable && !parent.io.isDevice ? parent.io.fd : undefined;
  if (src === undefined || dst === undefined) return undefined;
  const program = copyRangesProgram();
  if (!program) {
    if (!toldWhyNot) onNotice?.('coalesce: the copy-ranges program is not built (no C compiler at build time), does not run here, or SM_COPY_RANGES=off: data is copied through this process');
    toldWhyNot = true;
    return undefined;
  }
  return new InKernelCopy(parent, program, src, dst, prepared?.takeFor(src, dst));
}

/**
 * The program started ahead on the files of a child and its parent (opened
 * here by path), for a copy to come whose window is short: the first program
 * run of a coalesce of the same two files (CoalesceOptions.prepared) goes
 * through it, without a process start. close() once the copy is done or
 * not made (a second close does nothing).
 */
export class PreparedInKernelCopy {
  private taken = false;

  private constructor(
    private readonly files: FileHandle[],
    private readonly identities: [string, string],
    private readonly run: StartedCopy,
  ) {}

  /** Undefined where the in-kernel copy would not run (no program, a device). */
  static async start(childPath: string, parentPath: string): Promise<PreparedInKernelCopy | undefined> {
    const program = copyRangesProgram();
    if (!program) return undefined;
    const files: FileHandle[] = [];
    try {
      files.push(await open(childPath, 'r'), await open(parentPath, 'r+'));
      const stats = await Promise.all(files.map((f) => f.stat({ bigint: true })));
      if (!stats.every((st) => st.isFile())) throw new Error('not files');
      return new PreparedInKernelCopy(files, [identityOf(files[0].fd), identityOf(files[1].fd)], new StartedCopy(program, files[0].fd, files[1].fd));
    } catch {
      for (const f of files) await f.close();
      return undefined;
    }
  }

  /** Whether a copy took the started run. */
  get used(): boolean {
    return this.taken;
  }

  /** The started run, once, when `srcFd` and `dstFd` hold the same two files. */
  takeFor(srcFd: number, dstFd: number): StartedCopy | undefined {
    if (this.taken || identityOf(srcFd) !== this.identities[0] || identityOf(dstFd) !== this.identities[1]) return undefined;
    this.taken = true;
    return this.run;
  }

  /** Ends the program if it was not used (it exits having copied nothing), and closes the files. */
  async close(): Promise<void> {
    await this.run.cancel();
    for (const f of this.files.splice(0)) await f.close();
  }
}

function identityOf(fd: number): string {
  const st = fstatSync(fd, { bigint: true });
  return `${st.dev}:${st.ino}`;
}

export class InKernelCopy {
  /** How the last batch was copied (the program falls back to its own buffer where the kernel refuses). */
  method: CopyMethod | undefined;
  /** Time spent in the program's runs, ms. */
  programMs = 0;

  constructor(
    private readonly parent: VhdImage,
    private readonly program: string,
    private readonly srcFd: number,
    private readonly dstFd: number,
    /** Started ahead on the same files (PreparedInKernelCopy): the first run. */
    private started?: StartedCopy,
  ) {}

  /**
   * Writes a batch in one program run: new blocks appended (footer first,
   * bitmaps, then their data), blocks the parent has get their runs in place
   * and then their merged bitmap (data before the bit that makes it read).
   * Nothing is durable when it resolves: the caller's barrier comes before
   * the BAT.
   */
  async write(blocks: RangedBlock[]): Promise<void> {
    const parent = this.parent;
    const fresh = blocks.filter((b) => b.fresh);
    const merged = blocks.filter((b) => !b.fresh);
    const inPlace = merged.flatMap((b) => b.copies.map((c) => ({ src: c.src, dst: parent.dataOffset(b.index) + c.at, length: c.length })));
    if (fresh.length) {
      // New blocks sit past the file's end when placed (a hole): their clear sectors read as zeros unwritten.
      await parent.appendBlocksWrittenBy(fresh, async (dataOffsets) => {
        const ranges: CopyRange[] = fresh.flatMap((b, k) => b.copies.map((c) => ({ src: c.src, dst: dataOffsets[k] + c.at, length: c.length })));
        this.method = await this.run([...ranges, ...inPlace]);
      });
    } else {
      this.method = await this.run(inPlace);
    }
    // All at once: a final copy of scattered writes has a bitmap in every block, each a round trip when awaited in turn.
    await Promise.all(merged.map((b) => parent.writeBitmap(b.index, b.bitmap)));
  }

  private async run(ranges: CopyRange[]): Promise<CopyMethod> {
    const t0 = performance.now();
    try {
      const started = this.started;
      this.started = undefined;
      return await (started ? started.copy(ranges) : copyRanges(this.program, this.srcFd, this.dstFd, ranges));
    } finally {
      this.programMs += Math.round(performance.now() - t0);
    }
  }
}

