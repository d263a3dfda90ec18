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
  /** ChainOptions.reuse: the open image that is the file at `parentPath`, if one may be taken over. */
  take(parentPath: string): Promise<VhdImage | undefined>;
  /** The images taken so far (the paused chain must not close these). */
  readonly taken: ReadonlySet<VhdImage>;
}

export async function reuseOpenImages(open: readonly VhdImage[], except: readonly string[]): Promise<ImageReuse> {
  const byFile = new Map<string, VhdImage>();
  for (const image of open) {
    if (image.io instanceof FileIO && !image.io.isDevice) byFile.set(image.io.identity, image);
  }
  for (const path of except) {
    const id = await fileIdentity(path);
    if (id !== undefined) byFile.delete(id);
  }
  const taken = new Set<VhdImage>();
  return {
    taken,
    async take(parentPath) {
      if (byFile.size === 0) return undefined;
      const id = await fileIdentity(parentPath);
      const image = id === undefined ? undefined : byFile.get(id);
      if (!image) return undefined;
      byFile.delete(id!);
      const io = image.io as FileIO;
      io.seal();
      if (io.path !== parentPath) io.renamedTo(parentPath);
      taken.add(image);
      return image;
    },
  };
}
