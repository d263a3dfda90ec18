/** `$SM_ROOT/run/sr-mount/<sr>` as a symlink to where the SR really is (a directory, a VG's /dev folder). */
import { mkdir, readlink, symlink, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { srMountPath } from './paths.js';

/** Points the SR's mount path at `target`, replacing a stale link. */
export async function linkSrMount(sr: string, target: string): Promise<void> {
  const mount = srMountPath(sr);
  await mkdir(dirname(mount), { recursive: true });
  if ((await readlink(mount).catch(() => undefined)) === target) return;
  await unlink(mount).catch(() => undefined);
  await symlink(target, mount);
}
