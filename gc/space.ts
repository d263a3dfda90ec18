/**
 * Extra space a coalesce needs: every block the children hold that the parent
 * lacks becomes a new parent block (data, bitmap and alignment padding).
 */
import { VhdImage } from '../lib/vhd/index.js';

/** `childPaths`: one child, or a run of hidden images collapsed into `parentPath` together. */
export async function coalesceExtraSpace(childPaths: string[], parentPath: string): Promise<{ bytes: number }> {
  const parent = await VhdImage.open(parentPath, false);
  try {
    const newBlocks = new Set<number>();
    let maxTableEntries = 0;
    for (const path of childPaths) {
      const child = await VhdImage.open(path, false);
      try {
        for (let i = 0; i < child.blockCount; i++) {
          if (child.hasBlock(i) && (i >= parent.blockCount || !parent.hasBlock(i))) newBlocks.add(i);
        }
        maxTableEntries = Math.max(maxTableEntries, child.header.maxTableEntries);
      } finally {
        await child.close();
      }
    }
    const perBlock = parent.blockSize + 4096;
    // A grown child may need a parent BAT rewrite; count a whole copy of the BAT as overhead.
    const overhead = maxTableEntries * 4 + 64 * 1024;
    return { bytes: newBlocks.size * perBlock + overhead };
  } finally {
    await parent.close();
  }
}
