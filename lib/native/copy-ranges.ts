/**
 * Byte ranges copied from one open file to another by the project's own
 * program (lib/native/copy-ranges.c, built into dist/native/): inside the
 * kernel with copy_file_range, as `cp` copies, instead of through a buffer in
 * this process. One program run copies a whole list of ranges.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { installRoot } from '../util/install-root.js';

export interface CopyRange {
  /** Byte offset in the source file. */
  src: number;
  /** Byte offset in the destination file. */
  dst: number;
  length: number;
}

/** How the program copied: in the kernel, or (where the kernel refuses between these files) through its own buffer. */
export type CopyMethod = 'in-kernel' | 'buffered';

/** The program failed: the ranges may be partly copied, so the caller's copy has failed. */
export class CopyRangesError extends Error {
  override readonly name = 'CopyRangesError';
}

/**
 * The built program, or undefined when there is none (built without a C
 * compiler), it does not run here (built for another machine), or env
 * SM_COPY_RANGES is `off`; SM_COPY_RANGES=<path> names another. Whether a
 * program runs is tried once per process (an empty list of ranges).
 */
export function copyRangesProgram(): string | undefined {
  const setting = process.env.SM_COPY_RANGES;
  if (setting === 'off') return undefined;
  const path = setting || join(installRoot(), 'dist', 'native', 'copy-ranges');
  let runs = tried.get(path);
  if (runs === undefined) {
    const r = spawnSync(path, ['0', '1'], { input: '', encoding: 'utf8', stdio: ['pipe', 'pipe', 'ignore'], timeout: 10_000 });
    runs = r.status === 0 && /^copied 0 /m.test(r.stdout ?? '');
    tried.set(path, runs);
  }
  return runs ? path : undefined;
}

const tried = new Map<string, boolean>();

/**
 * Copies every range from `srcFd` to `dstFd` (descriptors of this process,
 * handed to the program as they are, so it copies the files the caller opened
 * and checked, whatever their names now). Resolves when every byte is copied;
 * rejects with CopyRangesError otherwise. Durability is the caller's barrier.
 */
export function copyRanges(program: string, srcFd: number, dstFd: number, ranges: readonly CopyRange[]): Promise<CopyMethod> {
  return new StartedCopy(program, srcFd, dstFd).copy(ranges);
}

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  error?: Error;
}

/**
 * A run of the program started before its ranges are known: it waits on its
 * input. Where a process start must not fall inside a short window (a live
 * leaf-coalesce's final copy, the datapath paused, on a loaded host), it is
 * paid before. Used once: copy() or cancel().
 */
export class StartedCopy {
  private readonly child: ChildProcess;
  private readonly exit: Promise<Exit>;
  private used = false;

  constructor(
    private readonly program: string,
    srcFd: number,
    dstFd: number,
  ) {
    // The descriptors become 3 and 4 in the program.
    const child = spawn(program, ['3', '4'], { stdio: ['pipe', 'pipe', 'pipe', srcFd, dstFd] });
    this.child = child;
    this.exit = new Promise((resolve) => {
      let stdout = '';
      let stderr = '';
      child.stdout!.setEncoding('utf8').on('data', (s: string) => (stdout += s));
      child.stderr!.setEncoding('utf8').on('data', (s: string) => (stderr += s));
      child.stdin!.on('error', () => undefined); // a program that died early: its exit says why
      child.on('error', (error) => resolve({ code: null, signal: null, stdout, stderr, error }));
      child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
    });
  }

  /** Hands the program its ranges and ends its input; resolves when every byte is copied. */
  async copy(ranges: readonly CopyRange[]): Promise<CopyMethod> {
    if (this.used) throw new CopyRangesError(`${this.program}: this run was already used`);
    this.used = true;
    const expected = ranges.reduce((n, r) => n + r.length, 0);
    this.child.stdin!.end(ranges.map((r) => `${r.src} ${r.dst} ${r.length}\n`).join(''));
    const { code, signal, stdout, stderr, error } = await this.exit;
    if (error) throw new CopyRangesError(`${this.program}: could not run: ${error.message}`);
    const done = /^copied (\d+) (in-kernel|buffered)$/m.exec(stdout);
    if (code === 0 && done && Number(done[1]) === expected) return done[2] as CopyMethod;
    const why = signal ? `killed by ${signal}` : `exited with code ${code}`;
    const detail = stderr.trim().split('\n').slice(-2).join('; ') || (done ? `copied ${done[1]} of ${expected} bytes` : 'no result line');
    throw new CopyRangesError(`${this.program}: ${why}: ${detail}`);
  }

  /** Not needed after all: the program ends with nothing copied. */
  async cancel(): Promise<void> {
    if (this.used) return;
    this.used = true;
    this.child.stdin!.end();
    await this.exit;
  }
}
