/**
 * LV sizes for VHD images on LVM (thick provisioning). A thick LV holds every
 * block of the virtual size: the metadata blktap lays out (footer copy, header,
 * BAT for the image's BAT room, batmap, three parent locators), then per block
 * its bitmap + data placed so the data starts on a 4 KiB boundary
 * (layout.ts blockPlacement), then the footer in the last sector.
 */
import { roundUpToExtent } from '../os/lvm.js';
import { BLOCK_SIZE, DATA_ALIGN, FOOTER_SIZE, roundUp, SECTOR } from '../vhd/format/constants.js';
import { layoutFor } from '../vhd/format/layout.js';

/** Bitmap of one block: one bit per sector, padded to whole sectors. */
export function bitmapBytesFor(blockSize: number = BLOCK_SIZE): number {
  return roundUp(blockSize / SECTOR / 8, SECTOR);
}

/** Bytes a device needs so that an image of `virtualSize` with all its blocks allocated fits. */
export function fullImageBytes(virtualSize: number, batRoom: number = virtualSize): number {
  const entries = Math.ceil(Math.max(virtualSize, batRoom) / BLOCK_SIZE);
  const blocks = Math.ceil(virtualSize / BLOCK_SIZE);
  const { metadataEnd } = layoutFor(entries, 3);
  const bitmap = bitmapBytesFor();
  if (blocks === 0) return metadataEnd + FOOTER_SIZE;
  // First block: data aligned after the current footer sector and the bitmap; every
  // later block starts where the previous ended (aligned), so each adds the same step.
  const firstEnd = roundUp(metadataEnd + FOOTER_SIZE + bitmap, DATA_ALIGN) + BLOCK_SIZE;
  const step = roundUp(FOOTER_SIZE + bitmap, DATA_ALIGN) + BLOCK_SIZE;
  return firstEnd + (blocks - 1) * step + FOOTER_SIZE;
}

/** The inflated LV size: the full image rounded up to the 4 MiB extent. */
export function thickSizeFor(virtualSize: number, batRoom: number = virtualSize): number {
  return roundUpToExtent(fullImageBytes(virtualSize, batRoom));
}

/** The deflated LV size of a read-only image: what it uses, rounded up to the extent. */
export function deflatedSizeFor(usedBytes: number): number {
  return roundUpToExtent(Math.max(usedBytes, 1));
}
