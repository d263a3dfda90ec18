/**
 * What a scan needs of an image, read with two small reads (footer copy plus
 * header at the start, primary footer at the end) and no BAT: listing a
 * thousand images stays fast. Full validation is open()'s and check's job.
 */
import { open } from 'node:fs/promises';
import { DiskType, FOOTER_SIZE, HEADER_OFFSET, HEADER_SIZE } from './format/constants.js';
import { decodeFooter } from './format/footer.js';
import { decodeHeader } from './format/header.js';
import { corrupt, VhdError } from './errors.js';
import { formatUuid } from './image.js';

export interface ImageSummary {
  uuid: string;
  diskType: DiskType;
  virtualSize: number;
  physicalSize: number;
  hidden: boolean;
  /** The parent's file name as the header records it (differencing only). */
  parentName?: string;
  parentUuid?: string;
}

export async function readImageSummary(path: string): Promise<ImageSummary> {
  const fh = await open(path, 'r').catch((err: NodeJS.ErrnoException) => {
    throw err.code === 'ENOENT' ? new VhdError('not-found', 'no such file', path) : err;
  });
  try {
    const size = (await fh.stat()).size;
    if (size < HEADER_OFFSET + HEADER_SIZE + FOOTER_SIZE) throw corrupt(`file too small to be a dynamic VHD (${size} bytes)`, path);
    const tail = Buffer.alloc(FOOTER_SIZE);
    const head = Buffer.alloc(HEADER_OFFSET + HEADER_SIZE);
    await Promise.all([fh.read(tail, 0, FOOTER_SIZE, size - FOOTER_SIZE), fh.read(head, 0, head.length, 0)]);
    const footer = decodeFooter(tail);
    if (typeof footer === 'string') throw corrupt(`primary footer invalid: ${footer}`, path);
    if (footer.diskType !== DiskType.Dynamic && footer.diskType !== DiskType.Differencing) {
      throw new VhdError('unsupported', `disk type ${footer.diskType}`, path);
    }
    const differencing = footer.diskType === DiskType.Differencing;
    let parentName: string | undefined;
    let parentUuid: string | undefined;
    if (differencing) {
      const header = decodeHeader(head.subarray(HEADER_OFFSET));
      if (typeof header === 'string') throw corrupt(header, path);
      parentName = header.parentUnicodeName;
      parentUuid = formatUuid(header.parentUuid);
    }
    return {
      uuid: formatUuid(footer.uuid),
      diskType: footer.diskType,
      virtualSize: footer.currentSize,
      physicalSize: size,
      hidden: footer.hidden !== 0,
      parentName,
      parentUuid,
    };
  } finally {
    await fh.close();
  }
}
