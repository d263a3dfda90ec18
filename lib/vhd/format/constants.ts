/** Sizes, cookies and magic numbers of the VHD format as blktap writes it. */
export const SECTOR = 512;
export const FOOTER_SIZE = 512;
export const HEADER_OFFSET = 512;
export const HEADER_SIZE = 1024;
/** blktap puts the BAT right after the dynamic header. */
export const BAT_OFFSET = HEADER_OFFSET + HEADER_SIZE;
export const BLOCK_SIZE = 2 * 1024 * 1024;
/** Data of every block starts on a 4 KiB boundary (the bitmap sits just below it). */
export const DATA_ALIGN = 4096;
export const BAT_UNUSED = 0xffffffff;

export const FOOTER_COOKIE = 'conectix';
export const HEADER_COOKIE = 'cxsparse';
export const BATMAP_COOKIE = 'tdbatmap';

export const FEATURES_RESERVED = 0x2;
export const FILE_FORMAT_VERSION = 0x00010000;
export const HEADER_VERSION = 0x00010000;
export const BATMAP_VERSION = 0x00010002;
export const CREATOR_APP = 'tap\0';
export const CREATOR_VERSION = 0x00010003;
/** First creator version of `tap` that must carry a valid batmap. */
export const CREATOR_VERSION_BATMAP = 0x00010002;

export enum DiskType {
  Fixed = 2,
  Dynamic = 3,
  Differencing = 4,
}

/** Seconds between the unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC). */
export const VHD_EPOCH_OFFSET = 946684800;

/** Largest virtual size accepted (as the established SM: 2 TiB less 8 GiB). */
export const MAX_VIRTUAL_SIZE = 2040 * 1024 * 1024 * 1024;

export const LOCATOR_MACX = 0x4d616358;
export const LOCATOR_W2KU = 0x57326b75;
export const LOCATOR_W2RU = 0x57327275;
export const LOCATOR_COUNT = 8;
/** blktap reserves one sector for each locator's data. */
export const LOCATOR_SPACE = 512;

export function vhdTimestamp(unixMs: number = Date.now()): number {
  return Math.max(0, Math.floor(unixMs / 1000) - VHD_EPOCH_OFFSET) >>> 0;
}

export function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}
