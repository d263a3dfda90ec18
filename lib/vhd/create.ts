/** Creating new images: a dynamic base, or a differencing child of a parent. */
import { randomUUID } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { newBatmapHeader, encodeBatmapHeader, batmapChecksum } from './format/batmap.js';
import {
  BLOCK_SIZE,
  DiskType,
  LOCATOR_MACX,
  LOCATOR_SPACE,
  LOCATOR_W2KU,
  LOCATOR_W2RU,
  MAX_VIRTUAL_SIZE,
  roundUp,
  SECTOR,
  vhdTimestamp,
} from './format/constants.js';
import { encodeFooter, newFooter } from './format/footer.js';
import { encodeHeader, newHeader } from './format/header.js';
import { layoutFor } from './format/layout.js';
import { encodeLocator } from './format/locator.js';
import { VhdError } from './errors.js';
import { parseUuid } from './image.js';
import { FileIO } from './io.js';
import { parentNameFor } from './parent.js';
import { readImageSummary, type ImageSummary } from './summary.js';

export interface CreateOptions {
  /** BAT room for growing up to this size without moving data (bytes). */
  maxSize?: number;
  uuid?: string;
  /** fsync the new file before returning. */
  durable?: boolean;
}

/** Rounds a requested size up to whole sectors and checks it is in range. */
export function validVirtualSize(size: number): number {
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new VhdError('invalid-argument', `virtual size must be a positive integer number of bytes, got ${size}`);
  }
  const rounded = roundUp(size, SECTOR);
  if (rounded > MAX_VIRTUAL_SIZE) {
    throw new VhdError('invalid-argument', `virtual size ${size} exceeds the maximum ${MAX_VIRTUAL_SIZE}`);
  }
  return rounded;
}

function tableEntries(size: number, maxSize: number | undefined): number {
  const room = maxSize === undefined ? size : Math.max(size, validVirtualSize(maxSize));
  return Math.ceil(room / BLOCK_SIZE);
}

export async function createDynamic(path: string, size: number, opts: CreateOptions = {}): Promise<void> {
  const virtualSize = validVirtualSize(size);
  await writeNewImage(path, {
    virtualSize,
    maxTableEntries: tableEntries(virtualSize, opts.maxSize),
    diskType: DiskType.Dynamic,
    uuid: opts.uuid,
    durable: opts.durable,
  });
}

/**
 * Creates `childPath` as an empty differencing child of `parentPath` (same
 * directory). A child needs only the parent's footer and header: the caller may
 * pass the summary it already read, saving a second read of the parent.
 */
export async function createDifferencing(
  childPath: string,
  parentPath: string,
  opts: CreateOptions & { parent?: ImageSummary } = {},
): Promise<void> {
  const parentName = parentNameFor(childPath, parentPath);
  const [parent, { mtimeMs }] = await Promise.all([opts.parent ?? readImageSummary(parentPath), stat(parentPath)]);
  await writeNewImage(childPath, {
    virtualSize: parent.virtualSize,
    maxTableEntries: Math.max(parent.maxTableEntries, tableEntries(parent.virtualSize, opts.maxSize)),
    diskType: DiskType.Differencing,
    uuid: opts.uuid,
    durable: opts.durable,
    parent: { uuid: parseUuid(parent.uuid), timestamp: vhdTimestamp(mtimeMs), name: parentName },
  });
}

interface NewImage {
  virtualSize: number;
  maxTableEntries: number;
  diskType: DiskType;
  uuid?: string;
  durable?: boolean;
  parent?: { uuid: Buffer; timestamp: number; name: string };
}

/** Builds every metadata structure in memory and writes the file in one vectored write. */
async function writeNewImage(path: string, spec: NewImage): Promise<void> {
  const uuid = parseUuid(spec.uuid ?? randomUUID());
  const footer = newFooter({ size: spec.virtualSize, diskType: spec.diskType, uuid, timestamp: vhdTimestamp() });
  const header = newHeader(spec.maxTableEntries);
  const layout = layoutFor(spec.maxTableEntries, spec.parent ? 3 : 0);

  const locatorData: Buffer[] = [];
  if (spec.parent) {
    header.parentUuid = spec.parent.uuid;
    header.parentTimestamp = spec.parent.timestamp;
    header.parentUnicodeName = spec.parent.name;
    [LOCATOR_MACX, LOCATOR_W2KU, LOCATOR_W2RU].forEach((code, i) => {
      const data = encodeLocator(code, spec.parent!.name);
      if (data.length > LOCATOR_SPACE) throw new VhdError('invalid-argument', `parent name too long: ${spec.parent!.name}`);
      header.locators[i] = { code, dataSpace: LOCATOR_SPACE, dataLength: data.length, dataOffset: layout.locatorOffsets[i] };
      const sector = Buffer.alloc(LOCATOR_SPACE);
      data.copy(sector);
      locatorData.push(sector);
    });
  }

  const bat = Buffer.alloc(layout.batBytes, 0);
  bat.fill(0xff, 0, spec.maxTableEntries * 4);
  const map = Buffer.alloc(layout.batmapBytes);
  const bmHeader = newBatmapHeader(layout.batmapHeaderOffset, spec.maxTableEntries);
  bmHeader.checksum = batmapChecksum(map, spec.virtualSize);
  const footerBuf = encodeFooter(footer);

  const io = await FileIO.create(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'EEXIST') throw new VhdError('invalid-argument', 'file already exists', path);
    throw err;
  });
  try {
    const metadata = [footerBuf, encodeHeader(header), bat, encodeBatmapHeader(bmHeader), map, ...locatorData];
    if (io.isDevice) {
      // An LV made for the image: metadata at the start, the footer in the last sector.
      const size = await io.size();
      if (size < layout.metadataEnd + footerBuf.length) throw new VhdError('invalid-argument', `device of ${size} bytes too small for the metadata`, path);
      await io.write(metadata, 0);
      await io.write(footerBuf, size - footerBuf.length);
    } else {
      await io.write([...metadata, footerBuf], 0);
    }
    if (spec.durable) await io.sync();
  } finally {
    await io.close();
  }
}
