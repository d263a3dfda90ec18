/**
 * Growing an image. Within the BAT room reserved at creation it is one footer
 * update. Beyond it the metadata area must grow, which would overwrite data, so
 * the image is rewritten beside itself and renamed over the original (atomic).
 */
import { rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { encodeBatmapHeader, batmapChecksum, newBatmapHeader } from './format/batmap.js';
import { SECTOR } from './format/constants.js';
import { encodeFooter } from './format/footer.js';
import { geometryFor } from './format/geometry.js';
import { encodeHeader } from './format/header.js';
import { blockPlacement, layoutFor } from './format/layout.js';
import { validVirtualSize } from './create.js';
import { VhdError } from './errors.js';
import { VhdImage } from './image.js';
import { FileIO } from './io.js';

export async function resizeImage(path: string, newSize: number): Promise<{ moved: boolean }> {
  const size = validVirtualSize(newSize);
  const image = await VhdImage.open(path, true);
  let moved = false;
  try {
    if (size < image.virtualSize) {
      throw new VhdError('invalid-argument', `shrinking is not supported (${image.virtualSize} -> ${size})`, path);
    }
    if (size === image.virtualSize) return { moved };
    if (Math.ceil(size / image.blockSize) <= image.header.maxTableEntries) {
      await setVirtualSize(image, size);
      await image.sync();
      return { moved };
    }
    moved = true;
    await rewriteWithRoom(image, size);
  } finally {
    await image.close();
  }
  return { moved };
}

/** Sets the footer's size (the BAT already has room). */
export async function setVirtualSize(image: VhdImage, size: number): Promise<void> {
  image.footer.currentSize = size;
  image.footer.geometry = geometryFor(size);
  await image.writeFooter();
  await image.refreshBatmapChecksum();
}

async function rewriteWithRoom(image: VhdImage, size: number): Promise<void> {
  const path = image.path;
  const tmp = join(dirname(path), `.${basename(path)}.resize`);
  await unlink(tmp).catch(() => undefined); // left by an earlier interrupted resize
  const entries = Math.ceil(size / image.blockSize);
  const locators = image.header.locators.filter((l) => l.code !== 0);
  const layout = layoutFor(entries, locators.length);
  // The new file follows blktap's layout (BAT at 1536), whatever the old one used.
  const header = {
    ...image.header,
    tableOffset: layout.batOffset,
    maxTableEntries: entries,
    locators: image.header.locators.map((l) => ({ ...l })),
  };
  const locatorData: Buffer[] = [];
  let slot = 0;
  for (const l of header.locators) {
    if (l.code === 0) continue;
    const sector = Buffer.alloc(SECTOR);
    await image.io.read(sector.subarray(0, Math.min(l.dataLength, SECTOR)), l.dataOffset);
    locatorData.push(sector);
    l.dataOffset = layout.locatorOffsets[slot++];
    l.dataSpace = SECTOR;
  }
  const footer = { ...image.footer, currentSize: size, geometry: geometryFor(size) };
  const out = await FileIO.create(tmp);
  try {
    const bat = Buffer.alloc(layout.batBytes, 0);
    bat.fill(0xff, 0, entries * 4);
    const map = Buffer.alloc(layout.batmapBytes);
    let at = layout.metadataEnd;
    for (let i = 0; i < image.blockCount; i++) {
      if (!image.hasBlock(i)) continue;
      const block = await image.readBlock(i);
      const p = blockPlacement(at, image.bitmapBytes);
      await out.write([block.bitmap, block.data], p);
      bat.writeUInt32BE(p / SECTOR, i * 4);
      if (image.isBlockFull(i)) map[i >> 3] |= 0x80 >> (i & 7);
      at = p + block.bitmap.length + block.data.length;
    }
    const bmHeader = newBatmapHeader(layout.batmapHeaderOffset, entries);
    bmHeader.checksum = batmapChecksum(map, size);
    const footerBuf = encodeFooter(footer);
    await out.write([footerBuf, encodeHeader(header), bat, encodeBatmapHeader(bmHeader), map, ...locatorData], 0);
    await out.write(footerBuf, at);
    await out.sync();
  } catch (err) {
    await out.close();
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await out.close();
  await rename(tmp, path);
}
