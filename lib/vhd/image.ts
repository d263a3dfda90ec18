/**
 * One opened VHD image (dynamic or differencing): its decoded metadata, a cached
 * BAT and batmap, and the block-level primitives every algorithm builds on.
 */
import { decodeBatmapHeader, encodeBatmapHeader, batmapChecksum, batmapChecksumBytes, BatmapHeader } from './format/batmap.js';
import { allSet, setBits, testBit } from './format/bitmap.js';
import {
  BAT_UNUSED,
  BATMAP_VERSION,
  CREATOR_VERSION_BATMAP,
  DiskType,
  FOOTER_SIZE,
  HEADER_OFFSET,
  HEADER_SIZE,
  roundUp,
  SECTOR,
} from './format/constants.js';
import { decodeFooter, encodeFooter, Footer } from './format/footer.js';
import { decodeHeader, DynamicHeader, encodeHeader, locatorSpaceBytes } from './format/header.js';
import { blockPlacement } from './format/layout.js';
import { decodeLocator } from './format/locator.js';
import { corrupt, VhdError } from './errors.js';
import { FileIO, PositionalIO } from './io.js';

/** A new block for appendBlockPieces: its bitmap and its data in pieces (block size in total). */
export interface NewBlock {
  index: number;
  bitmap: Buffer;
  data: Buffer[];
}

/** A block read in one I/O: its sector bitmap followed by its data. */
export interface BlockBuffer {
  index: number;
  bitmap: Buffer;
  data: Buffer;
}

/** The steps of discardAllBlocks, each leaving a valid image (for callers that test a crash after each). */
export type DiscardStep = 'batmap-cleared' | 'bat-cleared' | 'footer-moved';

export class VhdImage {
  /** Sector bitmaps recently read (bounded; our own writes keep it current). */
  private readonly bitmapCache = new Map<number, Buffer>();
  private static readonly BITMAP_CACHE_LIMIT = 4096;
  /**
   * Counts bitmap writes. A cache-miss read that overlapped a write may hold the
   * older bitmap: it is returned (old or new is fine for that reader) but not
   * cached, or it would hide the newer bits from every later read-modify-write.
   */
  private bitmapWrites = 0;

  private constructor(
    readonly io: PositionalIO,
    public footer: Footer,
    public header: DynamicHeader,
    readonly bat: Uint32Array,
    private batmapHeader: BatmapHeader | undefined,
    /** The batmap bits, when the image has a trustworthy one. */
    private batmap: Buffer | undefined,
    /** Where the current footer sits = first byte after all data. */
    private endOfData: number,
  ) {}

  /** Where the primary footer is (a device's last sector; a file's end). */
  private footerAt = 0;
  /** First byte after the metadata (header, BAT, batmap, locators): where an image without blocks ends. */
  private metadataEnd = 0;

  // ---- opening -------------------------------------------------------------

  static async open(path: string, writable = false): Promise<VhdImage> {
    const io = await FileIO.open(path, writable);
    try {
      return await VhdImage.fromIO(io);
    } catch (err) {
      await io.close();
      throw err;
    }
  }

  /** Decodes and validates every structure; refuses anything damaged. */
  static async fromIO(io: PositionalIO): Promise<VhdImage> {
    const fileSize = await io.size();
    const where = io.path;
    if (fileSize < FOOTER_SIZE + HEADER_OFFSET + HEADER_SIZE) {
      throw corrupt(`file too small to be a dynamic VHD (${fileSize} bytes)`, where);
    }
    const footerBuf = Buffer.alloc(FOOTER_SIZE);
    await io.read(footerBuf, fileSize - FOOTER_SIZE);
    const footer = decodeFooter(footerBuf);
    if (typeof footer === 'string') {
      const backup = Buffer.alloc(FOOTER_SIZE);
      await io.read(backup, 0);
      const hint = typeof decodeFooter(backup) === 'string' ? '' : ' (the copy at offset 0 is valid: `sm-vhd repair` restores it)';
      throw corrupt(`primary footer invalid: ${footer}${hint}`, where);
    }
    if (footer.diskType === DiskType.Fixed) throw new VhdError('unsupported', 'fixed VHDs are not supported', where);
    if (footer.diskType !== DiskType.Dynamic && footer.diskType !== DiskType.Differencing) {
      throw corrupt(`unknown disk type ${footer.diskType}`, where);
    }
    if (footer.dataOffset !== BigInt(HEADER_OFFSET)) {
      throw corrupt(`footer data offset ${footer.dataOffset} is not ${HEADER_OFFSET}`, where);
    }
    const headerBuf = Buffer.alloc(HEADER_SIZE);
    await io.read(headerBuf, HEADER_OFFSET);
    const header = decodeHeader(headerBuf);
    if (typeof header === 'string') throw corrupt(header, where);
    validateHeader(header, footer, fileSize, where);

    const batBytes = roundUp(header.maxTableEntries * 4, SECTOR);
    const batBuf = Buffer.alloc(batBytes);
    await io.read(batBuf, header.tableOffset);
    const bat = decodeBat(batBuf, header.maxTableEntries);

    let metadataEnd = header.tableOffset + batBytes;
    let batmapHeader: BatmapHeader | undefined;
    let batmap: Buffer | undefined;
    const needsBatmap = footer.creatorApp === 'tap\0' && footer.creatorVersion >= CREATOR_VERSION_BATMAP;
    if (needsBatmap) {
      const bh = Buffer.alloc(SECTOR);
      await io.read(bh, metadataEnd);
      const decoded = decodeBatmapHeader(bh);
      if (typeof decoded === 'string') throw corrupt(decoded, where);
      if (decoded.offset !== metadataEnd + SECTOR || decoded.sizeSectors * 8 * SECTOR < header.maxTableEntries) {
        throw corrupt('batmap header does not match the BAT', where);
      }
      if (decoded.offset + decoded.sizeSectors * SECTOR > fileSize - FOOTER_SIZE) throw corrupt('batmap beyond end of file', where);
      batmapHeader = decoded;
      const map = Buffer.alloc(decoded.sizeSectors * SECTOR);
      await io.read(map, decoded.offset);
      if (decoded.version > BATMAP_VERSION) {
        // A newer map may not mean what this code thinks it means. Like tapdisk: a
        // reader ignores it (bitmaps suffice), a writer refuses (it could not keep it current).
        if (io.writable) {
          throw new VhdError('unsupported', `batmap version 0x${decoded.version.toString(16)} is newer than this library's`, where);
        }
      } else if (batmapChecksum(map, footer.currentSize) === decoded.checksum) {
        // A torn batmap update only costs speed: readers fall back to the bitmaps.
        batmap = map;
      }
      metadataEnd = decoded.offset + map.length;
    }
    for (const l of header.locators) {
      if (l.code === 0) continue;
      const end = l.dataOffset + locatorSpaceBytes(l);
      if (l.dataOffset < HEADER_OFFSET + HEADER_SIZE || end > fileSize - FOOTER_SIZE) {
        throw corrupt('parent locator outside the file', where);
      }
      if (l.dataOffset < metadataEnd && end > header.tableOffset) {
        throw corrupt('parent locator overlaps the BAT or batmap', where);
      }
      if (l.dataLength > locatorSpaceBytes(l)) throw corrupt('parent locator longer than its space', where);
      metadataEnd = Math.max(metadataEnd, end);
    }
    const image = new VhdImage(io, footer, header, bat, batmapHeader, batmap, 0);
    const dataEnd = image.validateBlocks(metadataEnd, fileSize);
    // In a file the footer always sits at the very end, and new blocks go after it
    // (space an interrupted allocation left before it stays unused). In a device
    // the footer keeps the last sector and new blocks go after the data.
    image.endOfData = io.isDevice ? dataEnd : fileSize - FOOTER_SIZE;
    image.footerAt = fileSize - FOOTER_SIZE;
    image.metadataEnd = metadataEnd;
    return image;
  }

  /** Checks every BAT entry lies inside the file, past the metadata, without overlaps; returns the end of the data. */
  private validateBlocks(metadataEnd: number, fileSize: number): number {
    const span = this.bitmapBytes + this.blockSize;
    const offsets: number[] = [];
    for (let i = 0; i < this.bat.length; i++) {
      const e = this.bat[i];
      if (e === BAT_UNUSED) continue;
      if (i >= this.blockCount) throw corrupt(`BAT entry ${i} is beyond the virtual size`, this.io.path);
      const at = e * SECTOR;
      if (at < metadataEnd) throw corrupt(`block ${i} overlaps metadata`, this.io.path);
      if (at + span > fileSize - FOOTER_SIZE) throw corrupt(`block ${i} extends past the footer`, this.io.path);
      offsets.push(at);
    }
    offsets.sort((a, b) => a - b);
    for (let i = 1; i < offsets.length; i++) {
      if (offsets[i] - offsets[i - 1] < span) throw corrupt(`blocks at ${offsets[i - 1]} and ${offsets[i]} overlap`, this.io.path);
    }
    return offsets.length ? Math.max(metadataEnd, offsets[offsets.length - 1] + span) : metadataEnd;
  }

  // ---- geometry --------------------------------------------------------------

  get path(): string {
    return this.io.path;
  }
  get blockSize(): number {
    return this.header.blockSize;
  }
  get sectorsPerBlock(): number {
    return this.header.blockSize / SECTOR;
  }
  get bitmapBytes(): number {
    return roundUp(this.sectorsPerBlock / 8, SECTOR);
  }
  get virtualSize(): number {
    return this.footer.currentSize;
  }
  /** Blocks covering the virtual size. */
  get blockCount(): number {
    return Math.ceil(this.footer.currentSize / this.header.blockSize);
  }
  get isDifferencing(): boolean {
    return this.footer.diskType === DiskType.Differencing;
  }
  get hidden(): boolean {
    return this.footer.hidden !== 0;
  }
  get uuid(): string {
    return formatUuid(this.footer.uuid);
  }
  get parentUuid(): string | undefined {
    return this.isDifferencing ? formatUuid(this.header.parentUuid) : undefined;
  }
  get hasBatmap(): boolean {
    return this.batmapHeader !== undefined;
  }
  get batmapTrusted(): boolean {
    return this.batmap !== undefined;
  }
  get batmapVersion(): number | undefined {
    return this.batmapHeader?.version;
  }
  /** Where the footer sits: everything before it is metadata or data. */
  get dataEnd(): number {
    return this.endOfData;
  }
  get allocatedBlocks(): number {
    let n = 0;
    for (let i = 0; i < this.bat.length; i++) if (this.bat[i] !== BAT_UNUSED) n++;
    return n;
  }

  hasBlock(i: number): boolean {
    return this.bat[i] !== BAT_UNUSED;
  }
  bitmapOffset(i: number): number {
    return this.bat[i] * SECTOR;
  }
  dataOffset(i: number): number {
    return this.bat[i] * SECTOR + this.bitmapBytes;
  }
  /**
   * The batmap says every sector of block i is present. Bits past the bytes the
   * checksum covers (see batmapChecksum) are not trusted: those blocks use their bitmaps.
   */
  isBlockFull(i: number): boolean {
    return (
      this.batmap !== undefined &&
      i >> 3 < batmapChecksumBytes(this.virtualSize) &&
      (this.batmap[i >> 3] & (0x80 >> (i & 7))) !== 0
    );
  }

  // ---- reading -----------------------------------------------------------------

  async readBitmap(i: number): Promise<Buffer | undefined> {
    if (!this.hasBlock(i)) return undefined;
    const cached = this.bitmapCache.get(i);
    if (cached) return cached;
    const bm = Buffer.alloc(this.bitmapBytes);
    const writesBefore = this.bitmapWrites;
    await this.io.read(bm, this.bitmapOffset(i));
    if (this.bitmapWrites === writesBefore) this.cacheBitmap(i, bm);
    return bm;
  }

  /** A bitmap this image has just written: newer than any read still in flight. */
  private bitmapWritten(i: number, bm: Buffer): void {
    this.bitmapWrites++;
    this.cacheBitmap(i, bm);
  }

  private cacheBitmap(i: number, bm: Buffer): void {
    this.bitmapCache.delete(i);
    if (this.bitmapCache.size >= VhdImage.BITMAP_CACHE_LIMIT) {
      const oldest = this.bitmapCache.keys().next().value as number;
      this.bitmapCache.delete(oldest);
    }
    this.bitmapCache.set(i, bm);
  }

  /** Bitmap and data of an allocated block in a single read. */
  async readBlock(i: number, into?: Buffer): Promise<BlockBuffer> {
    const span = this.bitmapBytes + this.blockSize;
    const buf = into ?? Buffer.allocUnsafe(span);
    await this.io.read(buf.subarray(0, span), this.bitmapOffset(i));
    return { index: i, bitmap: buf.subarray(0, this.bitmapBytes), data: buf.subarray(this.bitmapBytes, span) };
  }

  /** Reads `length` bytes of block data from byte `offsetInBlock` (caller knows the sectors are present). */
  async readData(i: number, offsetInBlock: number, into: Buffer): Promise<void> {
    await this.io.read(into, this.dataOffset(i) + offsetInBlock);
  }

  /** The parent paths the locators name, in preference order (as stored, unresolved). */
  async parentLocatorPaths(): Promise<string[]> {
    const out: string[] = [];
    for (const l of this.header.locators) {
      if (l.code === 0 || l.dataLength === 0) continue;
      if (l.dataLength > locatorSpaceBytes(l) || l.dataLength > 4096) throw corrupt('parent locator length exceeds its space', this.path);
      const buf = Buffer.alloc(l.dataLength);
      await this.io.read(buf, l.dataOffset);
      const p = decodeLocator(l.code, buf);
      if (p !== undefined) out.push(p);
    }
    return out;
  }

  // ---- writing -----------------------------------------------------------------

  /**
   * Appends new blocks after the data, crash-safely: the footer moves to the new
   * end first (the gap reads as zeros and nothing points at it), then the blocks
   * are written; the BAT is updated in memory only. The caller makes the data
   * durable (when it matters) and then calls writeBatEntries().
   */
  async appendBlocks(blocks: BlockBuffer[]): Promise<void> {
    await this.appendBlockPieces(blocks.map((b) => ({ index: b.index, bitmap: b.bitmap, data: [b.data] })));
  }

  /**
   * appendBlocks with each block's data given as pieces that add up to the block
   * size, so a writer can pass a shared zero buffer around its own bytes instead
   * of building a 2 MiB block per allocation.
   */
  async appendBlockPieces(blocks: NewBlock[]): Promise<void> {
    if (blocks.length === 0) return;
    for (const b of blocks) {
      let n = 0;
      for (const piece of b.data) n += piece.length;
      if (n !== this.blockSize || b.bitmap.length !== this.bitmapBytes) {
        throw new VhdError('invalid-argument', `block ${b.index}: ${n} bytes of data and a ${b.bitmap.length}-byte bitmap do not make a block`, this.path);
      }
    }
    const { placements, newEnd } = await this.makeRoomFor(blocks.length);
    // One vectored write per run: [bitmap][data][zero pad] ... back to back.
    const start = placements[0];
    const bufs: Buffer[] = [];
    let pos = start;
    for (let k = 0; k < blocks.length; k++) {
      if (placements[k] > pos) bufs.push(Buffer.alloc(placements[k] - pos));
      bufs.push(blocks[k].bitmap, ...blocks[k].data);
      pos = placements[k] + this.bitmapBytes + this.blockSize;
    }
    await this.io.write(bufs, start);
    this.appended(blocks, placements, newEnd);
  }

  /**
   * appendBlocks for blocks whose data the caller writes itself (a copy made in
   * the kernel from another image's file): as crash-safe, the footer moves to
   * the new end first, then the bitmaps (and the zero pads before them) are
   * written, then `writeData` gets each block's data offset, in order, and
   * writes the data before it resolves: in a file, sectors it leaves read as
   * zeros (the space was past the end, a hole); on a device it must write
   * every sector. The BAT is updated in memory only, as for appendBlocks.
   */
  async appendBlocksWrittenBy(blocks: { index: number; bitmap: Buffer }[], writeData: (dataOffsets: number[]) => Promise<void>): Promise<void> {
    if (blocks.length === 0) return;
    for (const b of blocks) {
      if (b.bitmap.length !== this.bitmapBytes) throw new VhdError('invalid-argument', `block ${b.index}: a ${b.bitmap.length}-byte bitmap`, this.path);
    }
    const { placements, newEnd } = await this.makeRoomFor(blocks.length);
    let pos = placements[0];
    await Promise.all(
      blocks.map((b, k) => {
        const pad = placements[k] - pos;
        pos = placements[k] + this.bitmapBytes + this.blockSize;
        return this.io.write(pad > 0 ? [Buffer.alloc(pad), b.bitmap] : b.bitmap, placements[k] - pad);
      }),
    );
    await writeData(placements.map((p) => p + this.bitmapBytes));
    this.appended(blocks, placements, newEnd);
  }

  /**
   * Where `count` new blocks go after the data; in a file the footer is moved
   * past them first (the gap reads as zeros and nothing points at it), a
   * device must already have the room.
   */
  private async makeRoomFor(count: number): Promise<{ placements: number[]; newEnd: number }> {
    const placements: number[] = [];
    let at = this.endOfData;
    for (let k = 0; k < count; k++) {
      const p = blockPlacement(at, this.bitmapBytes);
      placements.push(p);
      at = p + this.bitmapBytes + this.blockSize;
    }
    if (this.io.isDevice) {
      if (at > this.footerAt) throw new VhdError('invalid-argument', `device too small for ${count} more blocks: inflate it first`, this.path);
    } else {
      await this.io.write(encodeFooter(this.footer), at);
      this.footerAt = at;
    }
    return { placements, newEnd: at };
  }

  /** New blocks are in place: the in-memory BAT points at them (the caller persists it after its barrier). */
  private appended(blocks: { index: number; bitmap: Buffer }[], placements: number[], newEnd: number): void {
    for (let k = 0; k < blocks.length; k++) {
      const i = blocks[k].index;
      this.bat[i] = placements[k] / SECTOR;
      this.bitmapWritten(i, Buffer.from(blocks[k].bitmap));
    }
    this.endOfData = newEnd;
  }

  /** Overwrites an allocated block's bitmap and data in one write. */
  async writeBlock(block: BlockBuffer): Promise<void> {
    await this.io.write([block.bitmap, block.data], this.bitmapOffset(block.index));
    this.bitmapWritten(block.index, Buffer.from(block.bitmap));
  }

  async writeBitmap(i: number, bitmap: Buffer): Promise<void> {
    await this.io.write(bitmap, this.bitmapOffset(i));
    this.bitmapWritten(i, Buffer.from(bitmap));
  }

  async writeData(i: number, offsetInBlock: number, data: Buffer): Promise<void> {
    await this.io.write(data, this.dataOffset(i) + offsetInBlock);
  }

  /**
   * Persists the BAT sectors holding the given entries (coalesced into runs),
   * from `source` when the in-memory BAT runs ahead of what may reach the disk.
   */
  async writeBatEntries(indices: Iterable<number>, source: Uint32Array = this.bat): Promise<void> {
    const sectors = [...new Set([...indices].map((i) => Math.floor((i * 4) / SECTOR)))].sort((a, b) => a - b);
    for (let k = 0; k < sectors.length; ) {
      let end = k;
      while (end + 1 < sectors.length && sectors[end + 1] === sectors[end] + 1) end++;
      const first = sectors[k];
      const count = sectors[end] - first + 1;
      const buf = Buffer.alloc(count * SECTOR, 0);
      for (let e = first * (SECTOR / 4); e < (first + count) * (SECTOR / 4); e++) {
        if (e < source.length) buf.writeUInt32BE(source[e], (e - first * (SECTOR / 4)) * 4);
      }
      await this.io.write(buf, this.header.tableOffset + first * SECTOR);
      k = end + 1;
    }
  }

  /** Sets batmap bits for blocks that are now full and persists the map and its header. */
  async markFull(indices: Iterable<number>): Promise<void> {
    if (!this.batmapHeader) return;
    if (!this.batmap) await this.rebuildBatmap();
    let changed = false;
    for (const i of indices) {
      const before = this.batmap![i >> 3];
      this.batmap![i >> 3] |= 0x80 >> (i & 7);
      changed ||= before !== this.batmap![i >> 3];
    }
    if (changed) await this.writeBatmap();
  }

  /** Recomputes the batmap from the bitmaps (after a torn update). */
  async rebuildBatmap(): Promise<void> {
    if (!this.batmapHeader) return;
    const map = Buffer.alloc(this.batmapHeader.sizeSectors * SECTOR);
    for (let i = 0; i < this.blockCount; i++) {
      const bm = await this.readBitmap(i);
      if (bm && allSet(bm, this.sectorsPerBlock)) map[i >> 3] |= 0x80 >> (i & 7);
    }
    this.batmap = map;
    await this.writeBatmap();
  }

  private async writeBatmap(): Promise<void> {
    const h = this.batmapHeader!;
    h.checksum = batmapChecksum(this.batmap!, this.virtualSize);
    // Header and map are adjacent: one write, so a process killed between two
    // writes cannot leave a map that disagrees with its checksum.
    await this.io.write([encodeBatmapHeader(h), this.batmap!], h.offset - SECTOR);
  }

  /** The checksum's range depends on the virtual size: re-seal it after a size change. */
  async refreshBatmapChecksum(): Promise<void> {
    if (this.batmapHeader && this.batmap) await this.writeBatmap();
  }

  /**
   * Drops every block (vhd-util's `modify -z`): a differencing image then
   * reads entirely from its parent. Each step leaves a valid image and the
   * whole is idempotent, so one cut short is finished by running it again:
   * the batmap first (a lost "full" bit only costs speed), then the BAT (the
   * data is gone), then a file is cut to its metadata and footer (the old
   * last sector is the same footer until the truncate).
   */
  async discardAllBlocks(onStep: (step: DiscardStep) => void = () => {}): Promise<void> {
    if (this.batmapHeader) {
      this.batmap = Buffer.alloc(this.batmapHeader.sizeSectors * SECTOR);
      await this.writeBatmap();
      onStep('batmap-cleared');
    }
    this.bat.fill(BAT_UNUSED);
    await this.io.write(encodeBatBytes(this.bat), this.header.tableOffset);
    this.bitmapCache.clear();
    this.bitmapWrites++;
    onStep('bat-cleared');
    this.endOfData = this.metadataEnd;
    if (!this.io.isDevice) {
      this.footerAt = this.endOfData;
      await this.io.write(encodeFooter(this.footer), this.endOfData);
      onStep('footer-moved');
      await this.io.truncate(this.endOfData + FOOTER_SIZE);
    }
  }

  /** Writes the primary footer and its copy at offset 0. */
  async writeFooter(): Promise<void> {
    const buf = encodeFooter(this.footer);
    await this.io.write(buf, this.io.isDevice ? this.footerAt : this.endOfData);
    await this.io.write(buf, 0);
  }

  /**
   * A device was resized (inflate/deflate): put the primary footer in its new
   * last sector. For a shrink call it BEFORE the device shrinks, so a valid
   * footer is at the end at every instant; refuses to cut into the data.
   */
  async moveFooterForDeviceSize(newSize: number): Promise<void> {
    if (!this.io.isDevice) throw new VhdError('invalid-argument', 'only a device has a movable footer', this.path);
    if (newSize - FOOTER_SIZE < this.endOfData) {
      throw new VhdError('invalid-argument', `a ${newSize}-byte device cannot hold ${this.endOfData + FOOTER_SIZE} bytes of image`, this.path);
    }
    this.footerAt = newSize - FOOTER_SIZE;
    await this.io.write(encodeFooter(this.footer), this.footerAt);
  }

  /** Bytes a device needs to hold the image as it is (data + footer). */
  get usedBytes(): number {
    return this.endOfData + FOOTER_SIZE;
  }

  async writeHeader(): Promise<void> {
    await this.io.write(encodeHeader(this.header), HEADER_OFFSET);
  }

  async setHidden(hidden: boolean): Promise<void> {
    this.footer.hidden = hidden ? 1 : 0;
    await this.writeFooter();
  }

  /** Marks sectors [from, to) of block i present, persisting bitmap and batmap. */
  async markSectors(i: number, from: number, to: number): Promise<void> {
    const current = (await this.readBitmap(i))!;
    let missing = false;
    forEachClear(current, from, to, () => (missing = true));
    if (!missing) return;
    const bm = Buffer.from(current);
    setBits(bm, from, to);
    await this.writeBitmap(i, bm);
    if (allSet(bm, this.sectorsPerBlock)) await this.markFull([i]);
  }

  async sync(): Promise<void> {
    await this.io.sync();
  }

  /** Data (and size) durable, timestamps not: PositionalIO.datasync. */
  async syncData(): Promise<void> {
    await (this.io.datasync ? this.io.datasync() : this.io.sync());
  }

  async close(): Promise<void> {
    await this.io.close();
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** The whole BAT as it sits on disk: big-endian entries, padded to a sector. */
function encodeBatBytes(bat: Uint32Array): Buffer {
  const buf = Buffer.alloc(Math.ceil((bat.length * 4) / SECTOR) * SECTOR, 0xff);
  for (let i = 0; i < bat.length; i++) buf.writeUInt32BE(bat[i], i * 4);
  return buf;
}

/** Big-endian BAT entries as numbers: one native byte swap, not an accessor call per entry (the BAT room may hold 100k). */
function decodeBat(buf: Buffer, entries: number): Uint32Array {
  const bat = new Uint32Array(entries);
  const bytes = Buffer.from(bat.buffer);
  buf.copy(bytes, 0, 0, entries * 4);
  if (LITTLE_ENDIAN) bytes.swap32();
  return bat;
}

function validateHeader(h: DynamicHeader, f: Footer, fileSize: number, where: string): void {
  const bs = h.blockSize;
  if (bs < SECTOR || bs > 256 * 1024 * 1024 || (bs & (bs - 1)) !== 0) throw corrupt(`bad block size ${bs}`, where);
  if (h.tableOffset < HEADER_OFFSET + HEADER_SIZE || h.tableOffset % SECTOR !== 0) {
    throw corrupt(`bad BAT offset ${h.tableOffset}`, where);
  }
  if (h.maxTableEntries < Math.ceil(f.currentSize / bs)) {
    throw corrupt(`BAT has ${h.maxTableEntries} entries, the virtual size needs ${Math.ceil(f.currentSize / bs)}`, where);
  }
  if (h.tableOffset + h.maxTableEntries * 4 > fileSize - FOOTER_SIZE) throw corrupt('BAT extends past the end of the file', where);
  if (f.diskType === DiskType.Differencing && h.parentUuid.every((b) => b === 0)) {
    throw corrupt('differencing image without a parent uuid', where);
  }
}

export function formatUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function parseUuid(s: string): Buffer {
  const hex = s.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new VhdError('invalid-argument', `not a uuid: ${s}`);
  return Buffer.from(hex, 'hex');
}

function forEachClear(map: Buffer, from: number, to: number, fn: (bit: number) => void): void {
  for (let b = from; b < to; b++) if (!testBit(map, b)) fn(b);
}
