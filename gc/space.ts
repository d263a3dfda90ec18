/**
 * Extra space a coalesce needs: every block the child holds that the parent
 * lacks becomes a new parent block (data, bitmap and alignment padding).
 */
import { VhdImage } from '../lib/vhd/index.js';

export async function coalesceExtraSpace(childPath: string, parentPath: string): Promise<{ bytes: number; childBytes: number }> {
  const child = await VhdImage.open(childPath, false);
  const parent = await VhdImage.open(parentPath, false);
  try {
    let newBlocks = 0;
    let childBlocks = 0;
    for (let i = 0; i < child.blockCount; i++) {
      if (!child.hasBlock(i)) continue;
      childBlocks++;
      if (i >= parent.blockCount || !parent.hasBlock(i)) newBlocks++;
    }
    const perBlock = parent.blockSize + 4096;
    // A grown child may need a parent BAT rewrite; count a whole copy of the BAT as overhead.
    const overhead = child.header.maxTableEntries * 4 + 64 * 1024;
    return { bytes: newBlocks * perBlock + overhead, childBytes: childBlocks * child.blockSize };
  } finally {
    await child.close();
    await parent.close();
  }
}
