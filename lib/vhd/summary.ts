/**
 * What a scan needs of an image, read with two small reads (footer copy plus
 * header at the start, primary footer at the end) and no BAT, through
 * small-reads.ts: listing thousands of images stays fast. Full validation is
 * open()'s and check's job.
 */
import { DiskType, FOOTER_SIZE, HEADER_OFFSET, HEADER_SIZE } from './format/constants.js';
import { decodeFooter } from './format/footer.js';
import { decodeHeader } from './format/header.js';
import { corrupt, VhdError } from './errors.js';
import { formatUuid } from './image.js';
import { deviceSizeOf, FileIO } from './io.js';
import { SmallReader } from '../util/small-reads.js';

export interface ImageSummary {
  uuid: string;
  diskType: DiskType;
  virtualSize: number;
  physicalSize: number;
  hidden: boolean;
  /** The parent's file name as the header records it (differencing only). */
  parentName?: string;
  parentUuid?: string;
  /** BAT entries the header provides room for (a child gets at least as many). */
  maxTableEntries: number;
}

export async function readImageSummary(path: string): Promise<ImageSummary> {
  const file = await SmallReader.open(path).catch((err: NodeJS.ErrnoException) => {
    throw err.code === 'ENOENT' ? new VhdError('not-found', 'no such file', path) : err;
  });
  try {
    const st = await file.stat();
    const size = st.isBlockDevice() ? await deviceSizeOf(st.rdev) : st.size; // a device's size is not in stat()
    if (size < HEADER_OFFSET + HEADER_SIZE + FOOTER_SIZE) throw corrupt(`file too small to be a dynamic VHD (${size} bytes)`, path);
    const tail = Buffer.alloc(FOOTER_SIZE);
    const head = Buffer.alloc(HEADER_OFFSET + HEADER_SIZE);
    const [tailRead, headRead] = await Promise.all([file.read(tail, size - FOOTER_SIZE), file.read(head, 0)]);
    if (tailRead < tail.length || headRead < head.length) throw corrupt(`short read (the file ends before ${size} bytes)`, path);
    const footer = decodeFooter(tail);
    if (typeof footer === 'string') throw corrupt(`primary footer invalid: ${footer}`, path);
    if (footer.diskType !== DiskType.Dynamic && footer.diskType !== DiskType.Differencing) {
      throw new VhdError('unsupported', `disk type ${footer.diskType}`, path);
    }
    const differencing = footer.diskType === DiskType.Differencing;
    const header = decodeHeader(head.subarray(HEADER_OFFSET));
    if (typeof header === 'string') throw corrupt(header, path);
    return {
      uuid: formatUuid(footer.uuid),
      diskType: footer.diskType,
      virtualSize: footer.currentSize,
      physicalSize: size,
      hidden: footer.hidden !== 0,
      parentName: differencing ? header.parentUnicodeName : undefined,
      parentUuid: differencing ? formatUuid(header.parentUuid) : undefined,
      maxTableEntries: header.maxTableEntries,
    };
  } finally {
    await file.close();
  }
}

/** What can still be learnt of an image whose summary cannot be read (see readImageRemains). */
export interface ImageRemains {
  /** From the footer copy at offset 0. */
  hidden: boolean;
  differencing: boolean;
  /** From the header, when the image is differencing and its header is intact. */
  parentName?: string;
  parentUuid?: string;
}

/**
 * An image that readImageSummary refuses (a torn or truncated end, a damaged
 * primary footer) may still say who its parent is: the footer copy at offset 0
 * and the header after it are checksummed, so what they say is trusted.
 * Undefined when even they cannot be read or do not check out: then nothing is
 * known of the image, its parent included.
 */
export async function readImageRemains(path: string): Promise<ImageRemains | undefined> {
  let io: FileIO | undefined;
  try {
    io = await FileIO.open(path, false);
    const head = Buffer.alloc(HEADER_OFFSET + HEADER_SIZE);
    await io.read(head, 0);
    const footer = decodeFooter(head.subarray(0, FOOTER_SIZE));
    if (typeof footer === 'string') return undefined;
    const differencing = footer.diskType === DiskType.Differencing;
    if (!differencing && footer.diskType !== DiskType.Dynamic) return undefined;
    const remains: ImageRemains = { hidden: footer.hidden !== 0, differencing };
    if (!differencing) return remains;
    const header = decodeHeader(head.subarray(HEADER_OFFSET));
    if (typeof header === 'string') return remains;
    return { ...remains, parentName: header.parentUnicodeName, parentUuid: formatUuid(header.parentUuid) };
  } catch {
    return undefined;
  } finally {
    await io?.close().catch(() => undefined);
  }
}
