/** The copy step shared by coalesce and leaf-coalesce: logged, with progress and speed. */
import { coalesceChainInto, imageInfo, resizeImage } from '../lib/vhd/index.js';
import { countSet } from '../lib/vhd/format/bitmap.js';
import type { GcContext } from './context.js';
import { progressReporter } from './gc-log.js';

/** Copies `children` (one image, or a run of hidden images from the parent's child upwards) into `parent`. */
export async function copyIntoParent(ctx: GcContext, children: string[], parent: string, what: string, sectors?: ReadonlyMap<number, Uint8Array>): Promise<CopyResult> {
  // Outside the SR lock: held, so a verb ending meanwhile never deactivates them (LVM).
  return ctx.repo.backend.withImagesActive([...children, parent], () => copyHeld(ctx, children, parent, what, sectors));
}

/** What one copy did: for the live rounds, which measure their own speed. */
export type CopyResult = { bytesCopied: number; elapsedMs: number };

/** `sectors`: only those sectors of the children, per block (a live leaf's writes meanwhile). */
async function copyHeld(ctx: GcContext, children: string[], parent: string, what: string, sectors?: ReadonlyMap<number, Uint8Array>): Promise<CopyResult> {
  const childPaths = children.map((c) => ctx.repo.imagePath(c));
  const parentPath = ctx.repo.imagePath(parent);
  const { size: childSize, childBytes } = await growParentForChildren(ctx, childPaths, parent);
  // A deflated parent (LVM) has no room for new blocks: inflate it first, for every
  // block of the children (grown by vdi_resize, one may be larger). Idempotent, redone on recovery.
  await ctx.repo.backend.prepareWrite(parent, childSize);
  const total = sectors ? [...sectors.values()].reduce((n, m) => n + countSet(m, m.length * 8) * 512, 0) : childBytes;
  const progress = progressReporter(ctx.log, what, total);
  const limit = Number(process.env.SM_GC_MAX_MIBPS);
  // Images discarded by the previous step are deleted beside this copy, which needs the disk's bandwidth, not its latency.
  const freeing = ctx.repo.backend.emptyTrash();
  freeing.catch(() => undefined); // surfaced below
  const result = await coalesceChainInto(childPaths, parentPath, {
    signal: ctx.signal,
    maxBytesPerSecond: limit > 0 ? limit * 1048576 : undefined,
    sectors,
    onNotice: (message) => ctx.log.info(message),
    onProgress: (p) => progress((p.blocksDone / Math.max(1, p.blocksTotal)) * total, p.elapsedMs),
  });
  await freeing;
  ctx.stats.bytesCopied += result.bytesCopied;
  ctx.stats.copyMs += result.elapsedMs;
  const rate = result.elapsedMs > 0 ? result.bytesCopied / 1048576 / (result.elapsedMs / 1000) : 0;
  ctx.log.info(`${what}: copied ${result.sectors} sectors (${(result.bytesCopied / 1048576).toFixed(1)} MiB) in ${result.elapsedMs} ms, ${rate.toFixed(1)} MiB/s, data copied ${result.copiedBy}`);
  return result;
}

/**
 * A child grown past its parent's BAT room (vdi_resize beyond the room reserved
 * at creation) cannot be copied into it: the parent grows first (files only:
 * on LVM a resize stays within the BAT room). Returns the largest child's virtual size. The parent has
 * no other child, and the grow is atomic (rewritten beside itself, renamed over;
 * a redo after a crash starts it again), so nobody reads it differently.
 * Also returns the bytes of the children's blocks (for the progress lines).
 */
async function growParentForChildren(ctx: GcContext, childPaths: string[], parent: string): Promise<{ size: number; childBytes: number }> {
  const [p, ...cs] = await Promise.all([imageInfo(ctx.repo.imagePath(parent)), ...childPaths.map((c) => imageInfo(c))]);
  const size = Math.max(...cs.map((c) => c.virtualSize));
  const childBytes = cs.reduce((n, c) => n + c.allocatedBlocks * c.blockSize, 0);
  if (size > p.maxVirtualSize) {
    ctx.log.info(`Growing ${parent.slice(0, 8)} to ${size} bytes first: its BAT has room for ${p.maxVirtualSize} only`);
    await resizeImage(ctx.repo.imagePath(parent), size);
  }
  return { size, childBytes };
}
