/** Guest-side helpers for the VM tier: guard, daemons, loop devices, scratch files. */
import { spawn } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { open, readFile, realpath, unlink } from 'node:fs/promises';
import { basename } from 'node:path';
import { runTool } from '../../../lib/os/run.js';

/** The VM tests change real LVM/iSCSI/NFS state: refuse to run anywhere but in the test VM. */
export function requireGuest(): void {
  if (process.env.SMVM_GUEST !== '1') {
    throw new Error('this is a VM-tier test: run it through test/vm/run-tier.sh, never on the host');
  }
}

/** Scratch directory for the guest (tmpfs, gone at power-off). */
export const SCRATCH = '/tmp';
/** Logs worth keeping after the run (the host's results folder). */
export const OUT = process.env.SMVM_OUT ?? '/tmp';

export interface Daemon {
  pid: number;
  /** SIGKILL (tgtd ignores SIGTERM) and wait for the exit. */
  kill(): Promise<void>;
}

/** Starts a foreground daemon in the background, its output to `logFile`. */
export function startDaemon(cmd: string, args: string[], logFile: string): Daemon {
  const fd = openSync(logFile, 'a');
  const child = spawn(cmd, args, { stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  child.unref(); // a daemon left running must not keep the test process alive
  const pid = child.pid;
  if (pid === undefined) throw new Error(`could not start ${cmd}`);
  return {
    pid,
    async kill() {
      child.kill('SIGKILL');
      // poll (an unref'd child's 'exit' event alone would not keep the loop alive)
      await until(`${cmd} to exit`, () => child.exitCode !== null || child.signalCode !== null, 10_000);
    },
  };
}

/** Polls `ok` every 100 ms up to `timeoutMs`; throws `what` on timeout. */
export async function until(what: string, ok: () => Promise<boolean> | boolean, timeoutMs = 15_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A sparse file of `sizeBytes`. */
export async function sparseFile(path: string, sizeBytes: number): Promise<string> {
  const fh = await open(path, 'w');
  await fh.truncate(sizeBytes);
  await fh.close();
  return path;
}

/** A loop device over a new sparse file; returns /dev/loopN. */
export async function makeLoop(file: string, sizeBytes: number): Promise<string> {
  await sparseFile(file, sizeBytes);
  return (await runTool('losetup', ['-f', '--show', file])).stdout.trim();
}

export async function freeLoop(dev: string, file?: string): Promise<void> {
  await runTool('losetup', ['-d', dev]).catch(() => {});
  if (file) await unlink(file).catch(() => {});
}

/** Size of a block device as the kernel reports it (sysfs, no process to start). */
export async function blockdevSize(dev: string): Promise<number> {
  const name = basename(await realpath(dev));
  return Number((await readFile(`/sys/class/block/${name}/size`, 'utf8')).trim()) * 512;
}

