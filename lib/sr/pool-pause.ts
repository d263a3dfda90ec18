/**
 * Which VDIs this host's datapath holds paused for the pool (the master's
 * pause through the tapdisk-pause plugin), as opposed to paused by a local
 * verb that was killed: only those are unpaused by the next local verb.
 * One empty file per VDI under `$SM_ROOT/run/sm/pool-paused/<sr>/`, gone with
 * a reboot as the datapath is.
 */
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { runStateDir } from './paths.js';

const markerOf = (sr: string, vdi: string) => runStateDir('pool-paused', sr, vdi);

export async function markPoolPause(sr: string, vdi: string): Promise<void> {
  await mkdir(runStateDir('pool-paused', sr), { recursive: true });
  await writeFile(markerOf(sr, vdi), `${new Date().toISOString()}\n`);
}

export async function clearPoolPause(sr: string, vdi: string): Promise<void> {
  await rm(markerOf(sr, vdi), { force: true });
}

export async function isPoolPaused(sr: string, vdi: string): Promise<boolean> {
  return stat(markerOf(sr, vdi)).then(
    () => true,
    () => false,
  );
}
