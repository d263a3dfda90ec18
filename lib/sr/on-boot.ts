/**
 * What the toolstack says a VDI does at boot (`vdi_on_boot`, sent with the VDI
 * verbs) is kept in its record, so the GC, which runs without the toolstack,
 * knows a reset VDI's parent is its reset point and leaves its leaf alone.
 * Only the master writes records; a VDI seen on a slave only is learnt at
 * its next verb on the master.
 */
import { getLog } from '../log/index.js';
import type { Repository } from './repository.js';

export async function noteOnBoot(repo: Repository, vdi: string, onBoot: string | undefined, isMaster: boolean): Promise<void> {
  if (!isMaster || (onBoot !== 'reset' && onBoot !== 'persist')) return;
  const record = await repo.records.getVdi(vdi);
  if (!record || (record.on_boot ?? 'persist') === onBoot) return;
  await repo.records.putVdis([{ ...record, on_boot: onBoot }]);
  getLog().info(`VDI ${vdi}: on boot ${onBoot}`);
}
