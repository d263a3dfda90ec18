/** Where blktap places each metadata structure of a new image, and where blocks go. */
import { batmapSectors } from './batmap.js';
import { BAT_OFFSET, DATA_ALIGN, FOOTER_SIZE, LOCATOR_SPACE, roundUp, SECTOR } from './constants.js';

export interface Layout {
  batOffset: number;
  batBytes: number; // padded to whole sectors
  batmapHeaderOffset: number;
  batmapOffset: number;
  batmapBytes: number;
  locatorOffsets: number[]; // one sector each
  metadataEnd: number; // first byte after all metadata (where the footer of an empty image sits)
}

export function layoutFor(maxTableEntries: number, locatorCount: number): Layout {
  const batBytes = roundUp(maxTableEntries * 4, SECTOR);
  const batmapHeaderOffset = BAT_OFFSET + batBytes;
  const batmapOffset = batmapHeaderOffset + SECTOR;
  const batmapBytes = batmapSectors(maxTableEntries) * SECTOR;
  const locatorOffsets: number[] = [];
  let at = batmapOffset + batmapBytes;
  for (let i = 0; i < locatorCount; i++, at += LOCATOR_SPACE) locatorOffsets.push(at);
  return {
    batOffset: BAT_OFFSET,
    batBytes,
    batmapHeaderOffset,
    batmapOffset,
    batmapBytes,
    locatorOffsets,
    metadataEnd: at,
  };
}

/**
 * Offset for the bitmap of a new block placed at or after `freeFrom`, such that
 * the block's data starts on a 4 KiB boundary, and the sector at `freeFrom`
 * (the current footer) is left intact until the new footer is in place.
 */
export function blockPlacement(freeFrom: number, bitmapBytes: number): number {
  return roundUp(freeFrom + FOOTER_SIZE + bitmapBytes, DATA_ALIGN) - bitmapBytes;
}
