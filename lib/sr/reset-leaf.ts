/**
 * Reset on boot (`vdi_on_boot` = "reset" in vdi_epoch_begin): the VDI's leaf
 * loses every block it holds, so the VM starts again from the leaf's parent,
 * the state at the VDI's last snapshot. As the established SM, a VDI without a
 * parent is refused: emptying it would lose the disk itself.
 *
 * Not journaled: emptying is idempotent and every step leaves a valid image
 * (VhdImage.discardAllBlocks), so a reset cut short is finished by the next
 * epoch_begin, which the toolstack sends before every VM start.
 */
import { VhdImage, readImageSummary, type DiscardStep } from '../vhd/index.js';
import { getLog } from '../log/index.js';
import { SMError } from '../errors/sm-error.js';
import { faultPoint } from './fault.js';
import type { Repository } from './repository.js';

/** A crash after each step of the emptying (test/crash/reset-faults.test.ts). */
function resetFaultPoint(step: DiscardStep): void {
  if (step === 'batmap-cleared') faultPoint('reset-batmap-cleared');
  else if (step === 'bat-cleared') faultPoint('reset-bat-cleared');
  else faultPoint('reset-footer-moved');
}

export async function resetLeaf(repo: Repository, vdi: string): Promise<void> {
  await repo.backend.withImagesActive([vdi], async () => {
    const path = repo.imagePath(vdi);
    const summary = await readImageSummary(path);
    if (summary.parentName === undefined) throw new SMError('SMGeneral', `VDI ${vdi} has no parent, its contents are not reset`);
    const image = await VhdImage.open(path, true);
    try {
      const dropped = image.allocatedBlocks;
      await image.discardAllBlocks(resetFaultPoint);
      await image.sync();
      getLog().info(`VDI ${vdi}: reset on boot, ${dropped} blocks of its leaf dropped; it reads from its parent again`);
    } finally {
      await image.close();
    }
  });
}
