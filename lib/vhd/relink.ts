/** Pointing a differencing image at a new parent (after its old parent was coalesced). */
import { open, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { LOCATOR_SPACE, vhdTimestamp } from './format/constants.js';
import { encodeLocator } from './format/locator.js';
import { VhdError } from './errors.js';
import { VhdImage } from './image.js';
import { isPlainName, parentNameFor } from './parent.js';
import { readImageSummary, type ImageSummary } from './summary.js';

/**
 * `sync` false: the locators and header are left in the page cache, for a
 * caller that must not wait on the disk now (the GC, with the child's readers
 * paused) and calls syncRelinked before anything depends on them (removing
 * the old parent).
 */
export async function setParent(childPath: string, newParentPath: string, opts: { sync?: boolean } = {}): Promise<void> {
  const name = parentNameFor(childPath, newParentPath);
  const parent = await VhdImage.open(newParentPath, false);
  let child: VhdImage;
  try {
    child = await VhdImage.open(childPath, true);
  } catch (err) {
    await parent.close();
    throw err;
  }
  try {
    if (!child.isDifferencing) throw new VhdError('invalid-argument', 'not a differencing image', childPath);
    if (parent.footer.uuid.equals(child.footer.uuid)) throw new VhdError('chain', 'an image cannot be its own parent', childPath);
    if (await isAncestor(child.uuid, newParentPath)) {
      throw new VhdError('chain', `${newParentPath} descends from this image: relinking would make a parent loop`, childPath);
    }
    // Locator data first: until the header names the new parent, readers still
    // find the old one by uuid mismatch rather than silently reading wrong data.
    for (const l of child.header.locators) {
      if (l.code === 0) continue;
      const data = encodeLocator(l.code, name);
      if (data.length > Math.max(l.dataSpace, LOCATOR_SPACE)) throw new VhdError('invalid-argument', 'parent name does not fit the locator', childPath);
      const sector = Buffer.alloc(LOCATOR_SPACE);
      data.copy(sector);
      await child.io.write(sector, l.dataOffset);
      l.dataLength = data.length;
    }
    child.header.parentUuid = Buffer.from(parent.footer.uuid);
    child.header.parentTimestamp = vhdTimestamp((await stat(newParentPath)).mtimeMs);
    child.header.parentUnicodeName = name;
    await child.writeHeader();
    // The locators and the header are overwritten in place: fdatasync makes them durable without a
    // journal commit for the timestamps.
    if (opts.sync !== false) await child.syncData();
  } finally {
    await child.close();
    await parent.close();
  }
}

/** Makes what setParent wrote without `sync` durable (fdatasync: they were overwritten in place). */
export async function syncRelinked(childPath: string): Promise<void> {
  const fh = await open(childPath, 'r');
  try {
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/**
 * Whether the image with `uuid` is an ancestor of (or is) the image at `path`: a
 * relink onto a descendant would make a loop no reader could open again. Walks
 * footers and headers only (no BATs), by the parent names the headers record
 * (parents live beside their children); a chain that cannot be read further
 * ends the walk, as it ends every reader there.
 */
async function isAncestor(uuid: string, path: string): Promise<boolean> {
  const seen = new Set<string>();
  for (let p: string | undefined = path; p !== undefined && !seen.has(p) && seen.size < 256; ) {
    seen.add(p);
    const s: ImageSummary | undefined = await readImageSummary(p).catch(() => undefined);
    if (s === undefined) return false;
    if (s.uuid === uuid) return true;
    p = s.parentName !== undefined && isPlainName(s.parentName) ? join(dirname(p), s.parentName) : undefined;
  }
  return false;
}
