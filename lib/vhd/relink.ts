/** Pointing a differencing image at a new parent (after its old parent was coalesced). */
import { stat } from 'node:fs/promises';
import { LOCATOR_SPACE, vhdTimestamp } from './format/constants.js';
import { encodeLocator } from './format/locator.js';
import { VhdError } from './errors.js';
import { VhdImage } from './image.js';
import { parentNameFor } from './parent.js';

export async function setParent(childPath: string, newParentPath: string): Promise<void> {
  const name = parentNameFor(childPath, newParentPath);
  const parent = await VhdImage.open(newParentPath, false);
  const child = await VhdImage.open(childPath, true);
  try {
    if (!child.isDifferencing) throw new VhdError('invalid-argument', 'not a differencing image', childPath);
    if (parent.footer.uuid.equals(child.footer.uuid)) throw new VhdError('chain', 'an image cannot be its own parent', childPath);
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
    await child.sync();
  } finally {
    await child.close();
    await parent.close();
  }
}
