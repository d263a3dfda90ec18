/**
 * Leaf-coalesce of a VDI active on another host of the pool, with a toolstack
 * to reach that host: its datapath is held paused through the toolstack
 * (`paused`, the tapdisk-pause plugin, failfast) for the whole merge, as the
 * established `_liveLeafCoalesce` does, and unpauses on the merged image. This
 * host cannot see that datapath's writes, so there is no live copy: only a
 * leaf small enough to merge within a short pause is taken. The merge runs
 * under the SR lock, where every pause is taken, so sr_scan (which unpauses a
 * `paused` it finds, left by a killed process) never meets this one live.
 * Journaled as the offline leaf-coalesce (`leaf`), and recovered as it is.
 * Standalone, such a leaf is skipped (collector.ts).
 */
import { faultPoint } from '../lib/sr/fault.js';
import { VhdImage } from '../lib/vhd/index.js';
import { beginJournal, type Journal } from '../lib/sr/journal.js';
import { withPaused } from '../lib/sr/xapi-pause.js';
import { underSrLock, type GcContext } from './context.js';
import { copyIntoParent } from './copy-into-parent.js';
import { swapIntoParent, whyNot } from './leaf-coalesce.js';
import { short } from './gc-log.js';

type LeafJournal = Extract<Journal, { kind: 'leaf' }>;

/** What the image holds (its metadata and allocated blocks): on LVM its LV is as large as its virtual size. */
async function usedBytesOf(path: string): Promise<number> {
  const image = await VhdImage.open(path);
  try {
    return image.usedBytes;
  } finally {
    await image.close();
  }
}

/** The most a leaf may hold to be merged while its host waits (the established LIVE_LEAF_COALESCE_MAX_SIZE: 20 MiB). */
export const PAUSED_LEAF_MAX_BYTES = Number(process.env.SM_GC_PAUSED_LEAF_MAX_MIB ?? 20) * 1048576;

export async function pausedLeafCoalesce(ctx: GcContext, leaf: string, parent: string, host: string): Promise<'done' | 'skipped'> {
  const { repo, log } = ctx;
  const db = ctx.toolstack;
  if (!db) throw new Error('a paused leaf-coalesce needs the toolstack');
  const j: LeafJournal = { kind: 'leaf', vdi: leaf, parent };
  return underSrLock(ctx, async () => {
    const bytes = await repo.backend.withImagesActive([leaf], () => usedBytesOf(repo.imagePath(leaf)));
    const why = (await whyNot(ctx, j, false, false, host)) ?? (bytes > PAUSED_LEAF_MAX_BYTES ? `it holds ${bytes} bytes, more than host ${host} may wait for (${PAUSED_LEAF_MAX_BYTES})` : undefined);
    if (why) {
      log.info(`Leaf-coalesce of ${short(leaf)} skipped: ${why}`);
      return 'skipped';
    }
    let begun = false;
    let swapped = false;
    try {
      await withPaused(
        db,
        leaf,
        undefined,
        async () => {
          log.info(`Leaf-coalescing ${short(leaf)} into *${short(parent)} while host ${host} holds it paused`);
          await beginJournal(repo.backend, j);
          begun = true;
          await repo.backend.withImagesActive([leaf, parent], async () => {
            await copyIntoParent(ctx, [leaf], parent, `Leaf-coalesce of ${short(leaf)}`);
            faultPoint('leaf-copied');
            await swapIntoParent(ctx, j);
          });
          swapped = true;
        },
        { failfast: true },
      );
      return 'done';
    } catch (err) {
      if (swapped) {
        // Merged; the host did not unpause: `paused` stays, and the next sr_scan or run asks it again.
        log.warn(`Leaf-coalesce of ${short(leaf)} done, but: ${(err as Error).message}`);
        await db.xapi.messageCreate('failed to unpause tapdisk', 4, 'SR', repo.uuid, `VDI ${leaf}: ${(err as Error).message}`).catch(() => undefined);
        return 'done';
      }
      if (begun) throw err; // the journal stays: the next run recovers the merge
      log.info(`Leaf-coalesce of ${short(leaf)} skipped: host ${host} could not pause it (${(err as Error).message})`);
      return 'skipped';
    }
  });
}
