/**
 * Structural check of an image (and optionally its parents): everything open()
 * validates, plus the backup footer, geometry, batmap vs bitmaps, and that no
 * sector outside the bitmap holds data. Returns problems; never throws for damage.
 */
import { allSet, forEachSetRun } from './format/bitmap.js';
import {
  BATMAP_VERSION,
  FEATURES_RESERVED,
  FILE_FORMAT_VERSION,
  FOOTER_SIZE,
  HEADER_VERSION,
  LOCATOR_MACX,
  LOCATOR_W2KU,
  LOCATOR_W2RU,
  SECTOR,
} from './format/constants.js';
import { decodeFooter } from './format/footer.js';
import { geometryFor, geometrySectors } from './format/geometry.js';
import { VhdError } from './errors.js';
import { VhdImage } from './image.js';
import { isPlainName, ParentResolver, siblingResolver } from './parent.js';

export interface CheckReport {
  path: string;
  problems: string[];
}

export interface CheckOptions {
  parents?: boolean;
  resolver?: ParentResolver;
  /** Skip the (slow) bitmap-vs-data scan of every block. */
  skipData?: boolean;
}

export async function checkChain(path: string, opts: CheckOptions = {}): Promise<CheckReport[]> {
  const reports: CheckReport[] = [];
  const seen = new Set<string>();
  let current: string | undefined = path;
  while (current !== undefined) {
    if (seen.has(current)) {
      reports.push({ path: current, problems: ['parent loop'] });
      break;
    }
    seen.add(current);
    const { report, parentPath } = await checkOne(current, opts);
    reports.push(report);
    current = opts.parents ? parentPath : undefined;
  }
  return reports;
}

async function checkOne(path: string, opts: CheckOptions): Promise<{ report: CheckReport; parentPath?: string }> {
  const problems: string[] = [];
  let image: VhdImage;
  try {
    image = await VhdImage.open(path, false);
  } catch (err) {
    problems.push(describe(err));
    return { report: { path, problems } };
  }
  let parentPath: string | undefined;
  try {
    checkFields(image, problems);
    await checkBackupFooter(image, problems);
    if (!image.hasBatmap && image.footer.creatorApp === 'tap\0') problems.push('tap image without a batmap');
    if (image.hasBatmap && image.batmapVersion! > BATMAP_VERSION) {
      problems.push(`unsupported batmap version 0x${image.batmapVersion!.toString(16)}`);
    } else if (image.hasBatmap && !image.batmapTrusted) {
      problems.push('batmap checksum mismatch');
    }
    if (!opts.skipData) await checkBlocks(image, problems);
    if (image.isDifferencing) {
      await checkLocators(image, problems);
      try {
        parentPath = await (opts.resolver ?? siblingResolver)(image);
        if (opts.parents) {
          const parent = await VhdImage.open(parentPath, false).catch(() => undefined);
          if (parent) {
            if (!parent.footer.uuid.equals(image.header.parentUuid)) {
              problems.push(`parent uuid mismatch: header says ${image.parentUuid}, ${parentPath} is ${parent.uuid}`);
            }
            await parent.close();
          }
        }
      } catch (err) {
        problems.push(describe(err));
      }
    }
  } finally {
    await image.close();
  }
  return { report: { path, problems }, parentPath };
}

function checkFields(image: VhdImage, problems: string[]): void {
  const f = image.footer;
  const h = image.header;
  if ((f.features & FEATURES_RESERVED) === 0) problems.push('footer features lack the reserved bit 0x2');
  if (f.fileFormatVersion !== FILE_FORMAT_VERSION) problems.push(`footer version 0x${f.fileFormatVersion.toString(16)}`);
  if (h.headerVersion !== HEADER_VERSION) problems.push(`header version 0x${h.headerVersion.toString(16)}`);
  if (f.currentSize % SECTOR !== 0) problems.push(`virtual size ${f.currentSize} is not a whole number of sectors`);
  if (f.uuid.every((b) => b === 0)) problems.push('uuid is all zero');
  if (geometrySectors(f.geometry) > geometrySectors(geometryFor(f.currentSize))) {
    problems.push(`geometry ${f.geometry.cylinders}/${f.geometry.heads}/${f.geometry.sectorsPerTrack} exceeds the virtual size`);
  }
  if (f.hidden > 1) problems.push(`hidden flag ${f.hidden} is not 0 or 1`);
}

/** Platform codes the VHD spec defines for parent locators ('Wi2r', 'Wi2k', 'Mac ' are deprecated). */
const LOCATOR_CODES = new Set([0x57693272, 0x5769326b, LOCATOR_W2RU, LOCATOR_W2KU, 0x4d616320, LOCATOR_MACX]);

/**
 * The resolver falls through to the next locator when one does not lead to the
 * parent, so a damaged locator never shows when opening: report it here. blktap
 * writes every locator with the parent's plain file name, as the header names it.
 */
async function checkLocators(image: VhdImage, problems: string[]): Promise<void> {
  const name = image.header.parentUnicodeName;
  if (!isPlainName(name)) problems.push(`parent name "${name}" is not a plain file name`);
  image.header.locators.forEach((l, i) => {
    if (l.code !== 0 && !LOCATOR_CODES.has(l.code)) problems.push(`parent locator ${i}: unknown platform code 0x${l.code.toString(16)}`);
  });
  let paths: string[];
  try {
    paths = await image.parentLocatorPaths();
  } catch (err) {
    problems.push(describe(err));
    return;
  }
  for (const raw of paths) {
    const located = raw.replace(/^\.\//, '');
    if (!isPlainName(located)) problems.push(`parent locator "${raw}" points outside the image's directory`);
    else if (located !== name) problems.push(`parent locator "${raw}" does not name the parent "${name}"`);
  }
}

async function checkBackupFooter(image: VhdImage, problems: string[]): Promise<void> {
  const buf = Buffer.alloc(FOOTER_SIZE);
  await image.io.read(buf, 0);
  const backup = decodeFooter(buf);
  if (typeof backup === 'string') {
    problems.push(`backup footer at offset 0 invalid: ${backup}`);
    return;
  }
  if (!backup.uuid.equals(image.footer.uuid) || backup.currentSize !== image.footer.currentSize) {
    problems.push('backup footer at offset 0 differs from the primary footer');
  }
}

async function checkBlocks(image: VhdImage, problems: string[]): Promise<void> {
  const spb = image.sectorsPerBlock;
  for (let i = 0; i < image.blockCount; i++) {
    if (!image.hasBlock(i)) {
      if (image.isBlockFull(i)) problems.push(`block ${i}: batmap says full but the block is not allocated`);
      continue;
    }
    const { bitmap, data } = await image.readBlock(i);
    if (image.isBlockFull(i) && !allSet(bitmap, spb)) problems.push(`block ${i}: batmap says full but the bitmap is not`);
    const zeros = Buffer.alloc(data.length);
    let prevEnd = 0;
    let dirty = -1;
    // Runs of clear sectors must be all zero: one native compare per run.
    const scan = (from: number, to: number) => {
      if (dirty >= 0 || from >= to) return;
      if (data.subarray(from * SECTOR, to * SECTOR).equals(zeros.subarray(0, (to - from) * SECTOR))) return;
      for (let s = from; s < to; s++) {
        if (!data.subarray(s * SECTOR, (s + 1) * SECTOR).equals(zeros.subarray(0, SECTOR))) {
          dirty = s;
          return;
        }
      }
    };
    forEachSetRun(bitmap, 0, spb, (s, e) => {
      scan(prevEnd, s);
      prevEnd = e;
    });
    scan(prevEnd, spb);
    if (dirty >= 0) problems.push(`block ${i}: sector ${dirty} holds data but its bitmap bit is clear`);
  }
}

function describe(err: unknown): string {
  if (err instanceof VhdError) return err.message;
  return err instanceof Error ? err.message : String(err);
}
