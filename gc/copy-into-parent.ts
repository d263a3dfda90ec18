/** The copy step shared by coalesce and leaf-coalesce: logged, with progress and speed. */
import { coalesceIntoParent } from '../lib/vhd/index.js';
import type { GcContext } from './context.js';
import { progressReporter } from './gc-log.js';
import { coalesceExtraSpace } from './space.js';

export async function copyIntoParent(ctx: GcContext, child: string, parent: string, what: string): Promise<void> {
  const childPath = ctx.repo.imagePath(child);
  const { childBytes } = await coalesceExtraSpace(childPath, ctx.repo.imagePath(parent));
  const progress = progressReporter(ctx.log, what, childBytes);
  const result = await coalesceIntoParent(childPath, {
    signal: ctx.signal,
    onProgress: (p) => progress((p.blocksDone / Math.max(1, p.blocksTotal)) * childBytes, p.elapsedMs),
  });
  ctx.stats.bytesCopied += result.bytesCopied;
  ctx.stats.copyMs += result.elapsedMs;
  const rate = result.elapsedMs > 0 ? result.bytesCopied / 1048576 / (result.elapsedMs / 1000) : 0;
  ctx.log.info(`${what}: copied ${result.sectors} sectors (${(result.bytesCopied / 1048576).toFixed(1)} MiB) in ${result.elapsedMs} ms, ${rate.toFixed(1)} MiB/s`);
}
