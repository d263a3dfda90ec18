/** The copy step shared by coalesce and leaf-coalesce: logged, with progress and speed. */
import { coalesceIntoParent, imageInfo, resizeImage } from '../lib/vhd/index.js';
import type { GcContext } from './context.js';
import { progressReporter } from './gc-log.js';
import { coalesceExtraSpace } from './space.js';

export async function copyIntoParent(ctx: GcContext, child: string, parent: string, what: string): Promise<void> {
  // Outside the SR lock: held, so a verb ending meanwhile never deactivates them (LVM).
  await ctx.repo.backend.withImagesActive([child, parent], () => copyHeld(ctx, child, parent, what));
}

async function copyHeld(ctx: GcContext, child: string, parent: string, what: string): Promise<void> {
  const childPath = ctx.repo.imagePath(child);
  const childSize = await growParentForChild(ctx, child, parent);
  // A deflated parent (LVM) has no room for new blocks: inflate it first, for every
  // block of the child (grown by vdi_resize, it may be larger). Idempotent, redone on recovery.
  await ctx.repo.backend.prepareWrite(parent, childSize);
  const { childBytes } = await coalesceExtraSpace(childPath, ctx.repo.imagePath(parent));
  const progress = progressReporter(ctx.log, what, childBytes);
  const limit = Number(process.env.SM_GC_MAX_MIBPS);
  const result = await coalesceIntoParent(childPath, {
    signal: ctx.signal,
    maxBytesPerSecond: limit > 0 ? limit * 1048576 : undefined,
    onProgress: (p) => progress((p.blocksDone / Math.max(1, p.blocksTotal)) * childBytes, p.elapsedMs),
  });
  ctx.stats.bytesCopied += result.bytesCopied;
  ctx.stats.copyMs += result.elapsedMs;
  const rate = result.elapsedMs > 0 ? result.bytesCopied / 1048576 / (result.elapsedMs / 1000) : 0;
  ctx.log.info(`${what}: copied ${result.sectors} sectors (${(result.bytesCopied / 1048576).toFixed(1)} MiB) in ${result.elapsedMs} ms, ${rate.toFixed(1)} MiB/s`);
}

/**
 * A child grown past its parent's BAT room (vdi_resize beyond the room reserved
 * at creation) cannot be copied into it: the parent grows first (files only:
 * on LVM a resize stays within the BAT room). Returns the child's virtual size. The parent has
 * no other child, and the grow is atomic (rewritten beside itself, renamed over;
 * a redo after a crash starts it again), so nobody reads it differently.
 */
async function growParentForChild(ctx: GcContext, child: string, parent: string): Promise<number> {
  const [c, p] = await Promise.all([imageInfo(ctx.repo.imagePath(child)), imageInfo(ctx.repo.imagePath(parent))]);
  if (c.virtualSize <= p.maxVirtualSize) return c.virtualSize;
  ctx.log.info(`Growing ${parent.slice(0, 8)} to ${c.virtualSize} bytes first: its BAT has room for ${p.maxVirtualSize} only`);
  await resizeImage(ctx.repo.imagePath(parent), c.virtualSize);
  return c.virtualSize;
}
