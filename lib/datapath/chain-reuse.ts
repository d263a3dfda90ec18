/**
 * After a pause the chain is opened again at its leaf, but most images below
 * the leaf are the very files the paused chain holds open, unchanged: a
 * snapshot renames the old leaf into the new leaf's parent (an open handle
 * survives a rename) and leaves every image below it as it was. Those are
 * taken over instead of opened again, so an unpause opens only what is new.
 *
 * Matching is by file (device and inode), never by name. The caller names the
 * images its change wrote into (`except`: a relink's children, a coalesce's
 * parent); those are opened afresh, as an image whose BAT, bitmaps or parent
 * changed under an open handle would read stale. An image taken over is sealed
 * (nothing is written through it again: it is a parent now) and takes the
 * name it has now.
 *
 * Only regular files are taken over: a logical volume is renamed, deflated
 * and deactivated by LVM under its device node, which this does not follow.
 */
import { fileIdentity, FileIO, type VhdImage } from '../vhd/index.js';

export interface ImageReuse {
  /**
   * ChainOptions.reuse: the open image that is the file at `parentPath`, if
   * one may be taken over, and the images below it in the paused chain as far
   * as they may be too (their headers are unchanged, so they are still its
   * ancestors: no lookup by name needed).
   */
  take(parentPath: string): Promise<readonly VhdImage[] | undefined>;
  /** The images taken so far (the paused chain must not close these). */
  readonly taken: ReadonlySet<VhdImage>;
}

export async function reuseOpenImages(open: readonly VhdImage[], except: readonly string[]): Promise<ImageReuse> {
  const excepted = new Set<string>();
  for (const path of except) {
    const id = await fileIdentity(path);
    if (id !== undefined) excepted.add(id);
  }
  const taken = new Set<VhdImage>();
  const allowed = (image: VhdImage | undefined): image is VhdImage =>
    image !== undefined && image.io instanceof FileIO && !image.io.isDevice && !excepted.has(image.io.identity) && !taken.has(image);
  return {
    taken,
    async take(parentPath) {
      const id = await fileIdentity(parentPath);
      const at = open.findIndex((i) => i.io instanceof FileIO && i.io.identity === id);
      if (id === undefined || !allowed(open[at])) return undefined;
      const run: VhdImage[] = [];
      for (let k = at; allowed(open[k]); k++) run.push(open[k]);
      (run[0].io as FileIO).renamedTo(parentPath);
      for (const image of run) {
        (image.io as FileIO).seal();
        taken.add(image);
      }
      return run;
    },
  };
}
