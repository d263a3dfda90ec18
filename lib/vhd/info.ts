/** What operators and the SR layer ask about images: query fields and directory scans. */
import { readdir } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { VhdChain, ChainOptions } from './chain.js';
import { VhdImage } from './image.js';
import { siblingResolver } from './parent.js';
import { mapLimit } from '../util/map-limit.js';

export interface ImageInfo {
  path: string;
  uuid: string;
  virtualSize: number;
  physicalSize: number;
  hidden: boolean;
  /** The parent's file name as the header records it; undefined for a base image. */
  parentName?: string;
  parentUuid?: string;
  maxVirtualSize: number;
  allocatedBlocks: number;
  blockSize: number;
}

export async function imageInfo(path: string): Promise<ImageInfo> {
  const image = await VhdImage.open(path, false);
  try {
    return {
      path,
      uuid: image.uuid,
      virtualSize: image.virtualSize,
      physicalSize: await image.io.size(),
      hidden: image.hidden,
      parentName: image.isDifferencing ? image.header.parentUnicodeName : undefined,
      parentUuid: image.parentUuid,
      maxVirtualSize: image.header.maxTableEntries * image.blockSize,
      allocatedBlocks: image.allocatedBlocks,
      blockSize: image.blockSize,
    };
  } finally {
    await image.close();
  }
}

/** Absolute path of the parent, or undefined for a base image. */
export async function parentPath(path: string): Promise<string | undefined> {
  const image = await VhdImage.open(path, false);
  try {
    return image.isDifferencing ? await siblingResolver(image) : undefined;
  } finally {
    await image.close();
  }
}

export async function chainDepth(path: string, opts: ChainOptions = {}): Promise<number> {
  const chain = await VhdChain.open(path, opts);
  const depth = chain.depth;
  await chain.close();
  return depth;
}

/** `*` and `?` wildcards in the last path component only, as a shell would. */
export async function globFiles(pattern: string): Promise<string[]> {
  const dir = dirname(pattern);
  const re = new RegExp(
    '^' + basename(pattern).replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.') + '$',
  );
  const names = await readdir(dir).catch(() => [] as string[]);
  return names.filter((n) => re.test(n)).sort().map((n) => join(dir, n));
}

export interface ScanEntry {
  name: string;
  info?: ImageInfo;
  error?: string;
}

/** Reads every matching image, sorted by name, at most 64 open at a time. */
export async function scanImages(pattern: string): Promise<ScanEntry[]> {
  const files = await globFiles(pattern);
  return mapLimit(files, 64, async (f) => {
    try {
      return { name: basename(f), info: await imageInfo(f) };
    } catch (err) {
      return { name: basename(f), error: (err as Error).message };
    }
  });
}
