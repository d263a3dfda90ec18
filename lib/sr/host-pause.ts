/**
 * The host side of the pool's pause protocol (the `tapdisk-pause` plugin): the
 * SR master, changing a VDI's chain, asks every host that serves it to pause,
 * unpause or refresh its datapath. Here that is this host's datapath for the
 * VDI: pause holds and drains its I/O and closes the image; unpause reopens
 * the chain at the VDI's leaf as it is now; refresh is both (the chain was
 * changed under an open image, e.g. a GC relink).
 *
 * Serialised with activation through the VDI's host-local lock (the
 * established `/var/lock/sm/<vdi>/vdi`): `failfast` does not wait for it.
 * A VDI not served here has nothing to pause: that is success, as the
 * established plugin answers when tapdisk's link is missing.
 *
 * A pause asked by the pool is recorded (pool-pause.ts), so a local verb on
 * the SR does not take it for the leftover of a killed verb and unpause it
 * under the master's change.
 */
import { controlCall } from '../datapath/control.js';
import { getLog } from '../log/index.js';
import { SMError } from '../errors/sm-error.js';
import { attachedBackend } from './attach-record.js';
import { servedHere, unpauseRequest } from './datapath.js';
import { requireUuid } from './ids.js';
import { acquireLock, type HeldLock } from './lock.js';
import { datapathControlPath } from './paths.js';
import { clearPoolPause, markPoolPause } from './pool-pause.js';
import { Repository } from './repository.js';

export type HostPauseAction = 'pause' | 'unpause' | 'refresh';

export interface HostPauseArgs {
  sr_uuid?: string;
  vdi_uuid?: string;
  /** "True": fail at once when the VDI's lock is busy. */
  failfast?: string;
}

const LOCK_WAIT_MS = Number(process.env.SM_LOCK_TIMEOUT_MS ?? 60_000);

/** The lock activation takes on the VDI, named after the established `/var/lock/sm/<vdi>/vdi` (no holder file: see lock.ts). */
export async function lockVdiHere(vdi: string, failfast: boolean): Promise<HeldLock> {
  const lock = await acquireLock(vdi, 'vdi', { timeoutMs: failfast ? 0 : LOCK_WAIT_MS, quiet: true });
  if (!lock) throw new SMError('LockErr', `VDI ${vdi} is locked on this host${failfast ? ' (failfast: not waiting)' : ` after ${LOCK_WAIT_MS} ms`}`);
  return lock;
}

/** Runs `fn` holding the VDI's host-local lock (activation, deactivation, the pool's pause). */
export async function withVdiLock<T>(vdi: string, fn: () => Promise<T>, failfast = false): Promise<T> {
  const lock = await lockVdiHere(vdi, failfast);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

/** Does `action` on this host's datapath of the VDI; true when done (or nothing to do). */
export async function hostPause(action: HostPauseAction, args: HostPauseArgs): Promise<true> {
  const sr = requireUuid(args.sr_uuid, 'sr_uuid', 'SRUnavailable');
  const vdi = requireUuid(args.vdi_uuid, 'vdi_uuid', 'VDIUnavailable');
  const failfast = args.failfast === 'True' || args.failfast === 'true';
  return withVdiLock(
    vdi,
    async () => {
      const served = (await servedHere(sr)).find((s) => s.vdi === vdi);
      if (!served) {
        getLog().info(`tapdisk-pause ${action}: VDI ${vdi} of SR ${sr} is not served here: nothing to do`);
        if (action === 'unpause') await clearPoolPause(sr, vdi);
        return true as const;
      }
      const control = datapathControlPath(sr);
      const repo = new Repository(await attachedBackend(sr));
      const resume = async () => {
        // The chain as the SR has it now (the master may have renamed or relinked images), held and mapped as it is now.
        const leaf = repo.imagePath(vdi);
        // Inside a hold: finding an LVM SR's changed-block log activates its LV if need be (held by the VDI's activation beyond).
        const { pausedMs } = await repo.backend.withImagesActive([], async () => {
          await repo.backend.afterRemoteChange(vdi, () => repo.chainOf(vdi));
          return controlCall(control, await unpauseRequest(repo, vdi));
        });
        await clearPoolPause(sr, vdi);
        getLog().info(`tapdisk-pause ${action}: VDI ${vdi} unpaused on ${leaf} after ${pausedMs} ms paused`);
      };
      if (action === 'pause' || action === 'refresh') {
        const started = Date.now();
        if (action === 'pause') await markPoolPause(sr, vdi);
        await controlCall(control, { op: 'pause', vdi });
        try {
          // The master changes the images next: what this host keeps of them goes (LVM: the VDI's LVs deactivated here).
          await repo.backend.beforeRemoteChange(vdi);
        } catch (err) {
          await resume().catch((e: Error) => getLog().warn(`tapdisk-pause ${action}: VDI ${vdi} not unpaused: ${e.message}`));
          throw err;
        }
        getLog().info(`tapdisk-pause ${action}: VDI ${vdi} paused (drained and settled in ${Date.now() - started} ms)`);
      }
      if (action === 'unpause' || action === 'refresh') await resume();
      return true as const;
    },
    failfast,
  );
}
