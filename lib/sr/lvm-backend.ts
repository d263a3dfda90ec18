/**
 * An LVM volume group on the SR's device(s) (LVMoISCSI SR): each image is an
 * LV `VHD-<uuid>` holding a VHD (metadata at the start, the footer in the LV's
 * last sector), thick (inflated) while writable, deflated to what it uses once
 * read-only (lvm-sizes.ts); SR metadata and journals live in the `MGT` LV
 * (mgt-volume.ts); a VDI's changed-block log is its own small LV `<uuid>.cbtlog`
 * (lvm-cbt-logs.ts). Every LVM command is confined to the SR's devices (lib/os/lvm).
 *
 * Activation, as the established LVHD does it: sr_attach activates only the
 * MGT LV; a VHD LV is active only while something holds it (lv-holds.ts):
 * vdi_activate holds the VDI's whole chain until vdi_deactivate, and work on
 * images (a verb, a GC run) holds what it touches inside withImagesActive().
 * An LV shared by several chains is deactivated when its last holder lets go.
 * Activation state is read from /dev/<vg>/ (LVM makes a node per active LV),
 * so asking costs no LVM command; switching many LVs is one lvchange.
 */
import { open, readdir } from 'node:fs/promises';
import { runTool, ToolError } from '../os/run.js';
import { existsSync } from 'node:fs';
import { getLog } from '../log/index.js';
import { cbtLogLvName, isNotFound, Lvm, MGT_LV, roundUpToExtent, vhdLvName } from '../os/lvm.js';
import { BLOCK_SIZE, FileIO, VhdImage } from '../vhd/index.js';
import { FOOTER_SIZE, HEADER_OFFSET, HEADER_SIZE } from '../vhd/format/constants.js';
import { decodeFooter } from '../vhd/format/footer.js';
import { decodeHeader } from '../vhd/format/header.js';
import { listActivationsIn, removeActivationIn, writeActivationIn } from './activation-dir.js';
import type { Activation, StorageBackend } from './backend.js';
import { isUuid } from './ids.js';
import { LvHolds, type TempHold } from './lv-holds.js';
import { LvmCbtLogs } from './lvm-cbt-logs.js';
import { MgtRecordArea, MgtRecordMedium } from './mgt-records.js';
import type { RecordMedium } from './records.js';
import { SMError } from '../errors/sm-error.js';
import { MGT_BYTES, MgtVolume } from './mgt-volume.js';
import { runStateDir } from './paths.js';
import { batRoomFor } from './sizes.js';
import { faultPoint } from './fault.js';

import { deflatedSizeFor, thickSizeFor } from './lvm-sizes.js';

const JOURNAL_NAME = /^[a-z]+-[0-9a-f-]{36}$/;
const VHD_LV = /^VHD-([0-9a-f-]{36})$/;
/** A changed-block log's LV, or one being made (lvm-cbt-logs.ts). */
const CBT_LV = /^([0-9a-f-]{36})\.cbtlog(\.tmp)?$/;
const isCbtLv = (name: string): boolean => isUuid(CBT_LV.exec(name)?.[1] ?? '');

/** An LV as holds name it (lv-holds.ts): an image by its uuid, a log by its LV name. */
const lvNameOf = (key: string): string => (isUuid(key) ? vhdLvName(key) : key);

export class LvmBackend implements StorageBackend {
  readonly lvm: Lvm;
  /** lvs output of the last listing, so a scan asks LVM once, not once per image. */
  private sizes: Map<string, number> | undefined;
  /** Sizes of the log LVs in the same listing, by LV name. */
  private logSizes: Map<string, number> | undefined;
  private listing: Promise<string[]> | undefined;
  readonly cbtLogs: LvmCbtLogs;
  private readonly holds: LvHolds;
  /** This process's hold while withImagesActive() calls are open (nested ones join it). */
  private scope: { open: number; hold: TempHold } | undefined;

  constructor(
    readonly srUuid: string,
    readonly vg: string,
    readonly devices: readonly string[],
  ) {
    this.lvm = new Lvm({ devices });
    this.holds = new LvHolds(srUuid, {
      active: () => this.activeImages(),
      activate: (uuids) => this.switchLvs(uuids, true),
      deactivate: (uuids) => this.switchLvs(uuids, false),
    });
    this.cbtLogs = new LvmCbtLogs({
      lvm: this.lvm,
      vg,
      lvSizes: () => this.logListing(),
      forgetListing: () => this.forgetListing(),
      hold: (names, activate) => this.requireScope('a changed-block log').add(names, activate),
      joinVdiHold: (vdi, name) => this.holds.joinVdi(vdi, [name]),
    });
  }

  async withImagesActive<T>(uuids: readonly string[], fn: () => Promise<T>): Promise<T> {
    const scope = (this.scope ??= { open: 0, hold: this.holds.temp() });
    scope.open++;
    try {
      await scope.hold.add(uuids);
      return await fn();
    } finally {
      if (--scope.open === 0) {
        this.scope = undefined;
        await scope.hold.release();
      }
    }
  }

  /** The VDI's chain, and its changed-block log when it has one: the datapath marks it while the VDI is active. */
  async holdVdi(vdi: string, chain: readonly string[]): Promise<void> {
    await this.holds.holdVdi(vdi, await this.withLog(vdi, chain));
  }

  /** What an active VDI holds: its chain, and its changed-block log's LV when it has one. */
  private async withLog(vdi: string, chain: readonly string[]): Promise<string[]> {
    return [...chain, ...((await this.cbtLogs.has(vdi)) ? [cbtLogLvName(vdi)] : [])];
  }

  async releaseVdi(vdi: string): Promise<void> {
    await this.holds.releaseVdi(vdi);
  }

  /**
   * This host's device nodes map each LV as this host activated it; LVM here
   * never hears of the master's lvrename, lvresize or lvremove. So while the
   * master changes the VDI's images, its LVs are inactive here (a shared
   * parent other VDIs here hold stays active: the master only grows one).
   */
  async beforeRemoteChange(vdi: string): Promise<void> {
    await this.holds.idleVdi(vdi);
  }

  /**
   * The chain as the VG's metadata has it now, active again. An LV of it that
   * stayed active here (a parent other VDIs here hold) is reloaded, as it may
   * have grown, and its page cache dropped, as this host may hold blocks of it
   * from before the master wrote it; one activated now is fresh already.
   */
  async afterRemoteChange(vdi: string, chainNow: () => Promise<readonly string[]>): Promise<void> {
    const before = await this.activeImages();
    const held = await this.withLog(vdi, await chainNow());
    await this.holds.holdVdi(vdi, held);
    const stayed = held.filter((k) => before.has(k)).map(lvNameOf);
    if (stayed.length === 0) return;
    await this.lvm.refresh(this.vg, stayed);
    await runTool('blockdev', ['--flushbufs', ...stayed.map((lv) => Lvm.lvPath(this.vg, lv))], { timeoutMs: 60_000 });
  }

  async settleHolds(isVdiActive: (vdi: string) => Promise<boolean>, all = false): Promise<void> {
    await this.holds.settle(isVdiActive, all);
  }

  forgetListing(): void {
    this.sizes = undefined;
    this.logSizes = undefined;
  }

  /** The log LVs' sizes: from the last listing, or one listing shared by every caller waiting for it (a scan asks for many at once). */
  private async logListing(): Promise<Map<string, number>> {
    // Again if something forgot the listing meanwhile (an LV made or removed).
    while (!this.logSizes) await (this.listing ??= this.listImages().finally(() => (this.listing = undefined)));
    return this.logSizes;
  }

  /** Image work must run inside withImagesActive(), or what it activates would never be released. */
  private requireScope(what: string): TempHold {
    if (!this.scope) throw new Error(`${what} outside withImagesActive (LVs would stay active)`);
    return this.scope.hold;
  }

  private async ensureActive(uuids: string[], what: string): Promise<void> {
    await this.requireScope(what).add(uuids);
  }

  /** Images and logs whose LV is active (as holds name them): LVM keeps a /dev/<vg>/<lv> node for each active LV. */
  private async activeImages(): Promise<Set<string>> {
    const names = await readdir(`/dev/${this.vg}`).catch(() => [] as string[]);
    const images = names.map((n) => VHD_LV.exec(n)?.[1]).filter((u): u is string => u !== undefined && isUuid(u));
    return new Set([...images, ...names.filter(isCbtLv)]);
  }

  /** One lvchange for all; an LV gone meanwhile (removed by a verb) is skipped. */
  private async switchLvs(uuids: string[], active: boolean): Promise<void> {
    try {
      await this.lvm.setActive(this.vg, uuids.map(lvNameOf), active);
    } catch (e) {
      if (!isNotFound(e)) throw e;
      this.forgetListing();
      const present = new Set(await this.listImages());
      const logs = this.logSizes!;
      await this.lvm.setActive(this.vg, uuids.map(lvNameOf).filter((n) => logs.has(n) || present.has(VHD_LV.exec(n)?.[1] ?? '')), active);
    }
    getLog().debug(`SR ${this.srUuid}: ${active ? 'activated' : 'deactivated'} ${uuids.map((u) => u.slice(0, 8)).join(' ')}`);
  }

  imagePath(uuid: string): string {
    if (!isUuid(uuid)) throw new Error(`not a uuid: ${uuid}`);
    return Lvm.lvPath(this.vg, vhdLvName(uuid));
  }

  private mgt(): MgtVolume {
    return new MgtVolume(Lvm.lvPath(this.vg, MGT_LV));
  }

  async listImages(): Promise<string[]> {
    const lvs = await this.lvm.lvs(this.vg);
    const sizes = new Map<string, number>();
    const logSizes = new Map<string, number>();
    for (const lv of lvs) {
      const m = VHD_LV.exec(lv.name);
      if (m && isUuid(m[1]!)) sizes.set(m[1]!, lv.sizeBytes);
      else if (isCbtLv(lv.name)) logSizes.set(lv.name, lv.sizeBytes);
    }
    this.sizes = sizes;
    this.logSizes = logSizes;
    return [...sizes.keys()].sort();
  }

  /**
   * Whether the LV exists: an active one has its device node; an inactive one is
   * looked up in the last listing when there is one (a scan, the GC), else alone:
   * a verb on one VDI asks LVM for that LV, not for a listing as long as the SR.
   */
  async hasImage(uuid: string): Promise<boolean> {
    if (existsSync(this.imagePath(uuid))) return true;
    if (this.sizes) return this.sizes.has(uuid);
    return (await this.lvm.lv(this.vg, vhdLvName(uuid))) !== undefined;
  }

  private hasMgt(): boolean {
    return existsSync(Lvm.lvPath(this.vg, MGT_LV));
  }

  /** A thick (fully inflated) LV: every block of the virtual size fits, so writes never need to grow it. */
  async prepareImage(uuid: string, virtualSize: number): Promise<string> {
    // Named by this process's hold first: lvcreate makes it active, and a kill right after must not leak that.
    await this.requireScope('prepareImage').add([uuid], false);
    this.sizes = undefined;
    await noSpaceAsSrNoSpace(this.lvm.lvcreate(this.vg, vhdLvName(uuid), this.newImageBytes(virtualSize)));
    return this.imagePath(uuid);
  }

  async removeImage(uuid: string): Promise<void> {
    this.sizes = undefined;
    try {
      await this.lvm.lvremove(this.vg, vhdLvName(uuid));
    } catch (e) {
      if (!isNotFound(e)) throw e;
    }
  }

  /** lvremove gives the extents back at once: nothing to defer. */
  async discardImages(uuids: string[]): Promise<void> {
    for (const u of uuids) await this.removeImage(u);
  }

  async emptyTrash(): Promise<void> {}

  /** lvrename commits LVM metadata to the PVs itself: durable when it returns. */
  async renameImage(from: string, to: string): Promise<void> {
    // The holders of `from` (e.g. an active VDI whose image becomes a snapshot's base) keep it under its new name.
    await this.holds.follow(from, to);
    this.sizes = undefined;
    await this.lvm.lvrename(this.vg, vhdLvName(from), vhdLvName(to));
  }

  async flushImages(uuids: string[]): Promise<void> {
    await this.ensureActive(uuids, 'flushImages');
    await Promise.all(
      uuids.map(async (u) => {
        const fh = await open(this.imagePath(u), 'r+');
        try {
          await fh.sync();
        } finally {
          await fh.close();
        }
      }),
    );
  }

  /**
   * NOT atomic (LVM cannot rename over an existing LV): `to` is removed, then
   * `from` renamed. A crash between the two leaves only `from`; the
   * leaf-coalesce journal (gc/leaf-coalesce.ts) finds that state and completes it.
   */
  async replaceImage(from: string, to: string): Promise<void> {
    await this.removeImage(to);
    await this.renameImage(from, to);
  }

  async physicalSize(uuid: string): Promise<number> {
    const cached = this.sizes?.get(uuid);
    if (cached !== undefined) return cached;
    const lv = await this.lvm.lv(this.vg, vhdLvName(uuid));
    if (!lv) throw new Error(`no LV ${vhdLvName(uuid)} in ${this.vg}`);
    return lv.sizeBytes;
  }

  /**
   * Deflates a read-only image (a hidden base copy) to what it uses: the
   * footer moves first, so a valid footer is at the device's end at every
   * instant; calling it again after a crash finishes the job.
   */
  async deflate(uuid: string): Promise<number> {
    await this.ensureActive([uuid], 'deflate');
    const image = await VhdImage.open(this.imagePath(uuid), true);
    let target: number;
    try {
      target = deflatedSizeFor(image.usedBytes);
      if (target >= (await this.physicalSize(uuid))) return this.physicalSize(uuid);
      await image.moveFooterForDeviceSize(target);
      await image.sync();
    } finally {
      await image.close();
    }
    faultPoint('lvm-deflating');
    this.sizes = undefined;
    const size = await this.lvm.lvresize(this.vg, vhdLvName(uuid), target);
    faultPoint('lvm-deflated');
    return size;
  }

  /**
   * Inflates an image to the thick size of its virtual size, or of `growTo`
   * when larger (before anything is written into it, e.g. a coalesce, or before
   * a resize). Idempotent and self-completing: the footer to place at the new
   * end is the valid one at the current end, or else the copy at offset 0, so
   * calling it again after a crash between the resize and the footer write
   * finishes the job.
   */
  async inflate(uuid: string, growTo = 0): Promise<number> {
    await this.ensureActive([uuid], 'inflate');
    const path = this.imagePath(uuid);
    const { footer, bytes, maxTableEntries, virtualSize } = await readDeviceFooter(path);
    const target = thickSizeFor(Math.max(virtualSize, growTo), maxTableEntries * BLOCK_SIZE);
    this.sizes = undefined;
    const size = bytes >= target ? bytes : await noSpaceAsSrNoSpace(this.lvm.lvresize(this.vg, vhdLvName(uuid), target));
    if (size === bytes && footer.atEnd) return size;
    // Grown, footer not yet at the new end: the image cannot be opened until this completes.
    faultPoint('lvm-inflated');
    const fh = await open(path, 'r+');
    try {
      await fh.write(footer.buf, 0, FOOTER_SIZE, size - FOOTER_SIZE);
      await fh.sync();
    } finally {
      await fh.close();
    }
    return size;
  }

  async prepareWrite(uuid: string, virtualSize?: number): Promise<void> {
    await this.inflate(uuid, virtualSize);
  }

  /** An LV cannot hold a second copy of itself to rename over it. */
  readonly canRewriteImages = false;
  /** Only the master writes the VG's metadata, MGT included: each host keeps its own (see activationDir). */
  readonly activationsPoolWide = false;

  async settleReadOnly(uuid: string): Promise<void> {
    await this.deflate(uuid);
  }

  /** LVs other than the images, the changed-block logs and MGT (journals live in MGT). */
  async foreignEntries(): Promise<string[]> {
    const lvs = await this.lvm.lvs(this.vg);
    return lvs.map((lv) => lv.name).filter((n) => n !== MGT_LV && !(VHD_LV.test(n) && isUuid(n.slice(4))) && !isCbtLv(n)).sort();
  }

  async destroy(): Promise<void> {
    const mgt = await this.lvm.lv(this.vg, MGT_LV);
    if (mgt) {
      await this.mgt().wipe().catch(() => undefined);
      await this.lvm.lvremove(this.vg, MGT_LV);
    }
    await this.lvm.vgremove(this.vg);
    // Lvm has no pvremove; the same --config confines it to the SR's devices.
    await runTool('pvremove', ['--config', this.lvm.config, '-ff', '-y', ...this.devices], {
      timeoutMs: 120_000,
      env: { LVM_SUPPRESS_FD_WARNINGS: '1' },
    });
  }

  async space(): Promise<{ free: number; total: number }> {
    const [vg] = await this.lvm.vgs(this.vg);
    if (!vg) throw new Error(`volume group ${this.vg} not found`);
    return { free: vg.freeBytes, total: vg.sizeBytes };
  }

  newImageBytes(virtualSize: number): number {
    return thickSizeFor(virtualSize, batRoomFor(virtualSize));
  }

  readonly recordMedium: RecordMedium = new MgtRecordMedium(
    () => this.mgt(),
    () => new MgtRecordArea(Lvm.lvPath(this.vg, MGT_LV), this.srUuid, { ensureBytes: (bytes) => this.growMgt(bytes), remap: () => this.lvm.refresh(this.vg, [MGT_LV]) }),
    () => this.hasMgt(),
    () => this.ensureMgt(),
  );

  /**
   * The MGT LV grows when its record area is full (mgt-records.ts): by whole
   * extents, or SRNoSpace (44) before anything is written when the VG has no room.
   */
  private async growMgt(bytes: number): Promise<boolean> {
    const lv = await this.lvm.lv(this.vg, MGT_LV);
    if (!lv) throw new Error(`no ${MGT_LV} LV in ${this.vg}`);
    if (lv.sizeBytes >= bytes) return false;
    const target = roundUpToExtent(bytes);
    const { free } = await this.space();
    if (target - lv.sizeBytes > free) {
      throw new SMError('SRNoSpace', `the SR metadata volume needs ${target - lv.sizeBytes} more bytes for further VDI records, the volume group has ${free} free`);
    }
    await this.lvm.lvresize(this.vg, MGT_LV, target);
    getLog().info(`SR ${this.srUuid}: metadata volume grown to ${target} bytes`);
    return false;
  }

  private mgtReady = false;

  /** Creates the MGT LV on first use, wiped: the LUN may hold an old SR's slots at the same extents. */
  private async ensureMgt(): Promise<void> {
    if (this.mgtReady) return;
    if (!this.hasMgt() && !(await this.lvm.lv(this.vg, MGT_LV))) {
      await noSpaceAsSrNoSpace(this.lvm.lvcreate(this.vg, MGT_LV, roundUpToExtent(MGT_BYTES)));
      await this.mgt().wipe();
    }
    this.mgtReady = true;
  }

  async listJournals(): Promise<string[]> {
    if (!this.hasMgt()) return [];
    return [...(await this.mgt().listJournals()).keys()].filter((n) => JOURNAL_NAME.test(n)).sort();
  }

  async readJournal(name: string): Promise<string | undefined> {
    if (!this.hasMgt()) return undefined;
    return (await this.mgt().listJournals()).get(name);
  }

  async writeJournal(name: string, text: string): Promise<void> {
    await this.ensureMgt();
    await this.mgt().writeJournal(name, text);
  }

  async removeJournal(name: string): Promise<void> {
    await this.mgt().removeJournal(name).catch(() => undefined);
  }

  /**
   * Host-local for now: a pool-wide record on LVM needs a write to the MGT
   * volume, which only the master may make (see docs/architecture.md).
   */
  private activationDir(): string {
    return runStateDir('active', this.srUuid);
  }

  listActivations(): Promise<Map<string, Activation>> {
    return listActivationsIn(this.activationDir());
  }

  writeActivation(vdi: string, activation: Activation): Promise<void> {
    return writeActivationIn(this.activationDir(), vdi, activation);
  }

  removeActivation(vdi: string): Promise<void> {
    return removeActivationIn(this.activationDir(), vdi);
  }
}

/**
 * The footer of a VHD on a device, read raw: the last sector's when it is valid
 * and equal to the copy at offset 0 (a grown LV's new last sector may hold a
 * stale footer, even of this image before a deflate), else the copy.
 */
async function readDeviceFooter(path: string): Promise<{
  footer: { buf: Buffer; atEnd: boolean };
  bytes: number;
  maxTableEntries: number;
  virtualSize: number;
}> {
  const io = await FileIO.open(path, false);
  try {
    const bytes = await io.size();
    const end = Buffer.alloc(FOOTER_SIZE);
    await io.read(end, bytes - FOOTER_SIZE);
    const copy = Buffer.alloc(FOOTER_SIZE);
    await io.read(copy, 0);
    const endFooter = decodeFooter(end);
    const copyFooter = decodeFooter(copy);
    const atEnd = typeof endFooter !== 'string' && (typeof copyFooter === 'string' || end.equals(copy));
    const decoded = atEnd ? endFooter : copyFooter;
    if (typeof decoded === 'string') throw new Error(`${path}: no valid VHD footer (${decoded})`);
    const hbuf = Buffer.alloc(HEADER_SIZE);
    await io.read(hbuf, HEADER_OFFSET);
    const header = decodeHeader(hbuf);
    if (typeof header === 'string') throw new Error(`${path}: bad VHD header (${header})`);
    return { footer: { buf: atEnd ? end : copy, atEnd }, bytes, maxTableEntries: header.maxTableEntries, virtualSize: decoded.currentSize };
  } finally {
    await io.close();
  }
}

/**
 * LVM refuses an LV or a growth the volume group has no extents for; that is
 * the SR being full (SRNoSpace, 44), not a failed verb. LVM has changed nothing
 * when it says so.
 */
async function noSpaceAsSrNoSpace<T>(command: Promise<T>): Promise<T> {
  try {
    return await command;
  } catch (e) {
    if (e instanceof ToolError && /insufficient (free space|suitable allocatable extents)/i.test(e.stderr)) {
      throw new SMError('SRNoSpace', e.stderr.trim().split('\n').pop() ?? 'the volume group is full');
    }
    throw e;
  }
}
