/**
 * Changed-block logs of an LVM SR: one small LV per log, `<uuid>.cbtlog` in
 * the SR's VG as the established LVHD names it, sized for the log of the
 * VDI's virtual size (header + one bit per 64 KiB block) rounded up to the
 * extent, so one 4 MiB extent holds the log of a disk up to 2 TiB.
 *
 * Active only where it is used, like the images' LVs: a verb holds what it
 * reads or writes until it ends; vdi_activate holds the VDI's own log with
 * its chain for the datapath, which marks it until vdi_deactivate.
 *
 * A new log is written whole into `<uuid>.cbtlog.tmp` and renamed (an LVM
 * metadata commit), so it appears complete or not at all; an existing one is
 * rewritten in place (lib/cbt/log-file.ts), its LV grown first when the
 * disk grew past what it holds.
 */
import { existsSync } from 'node:fs';
import { bitmapBytes, CBT_HEADER_SIZE, writeLog, type CbtLog } from '../cbt/index.js';
import { cbtLogLvName, isNotFound, Lvm, roundUpToExtent } from '../os/lvm.js';
import type { CbtLogStore } from './backend.js';
import { faultPoint } from './fault.js';
import { isUuid } from './ids.js';

const TEMP_SUFFIX = '.tmp';

/** What the store needs of the LVM backend: its VG, its listing, and its holds. */
export interface LogLvAccess {
  readonly lvm: Lvm;
  readonly vg: string;
  /** Sizes of the VG's LVs by name, from the last listing (one lvs for any number of checks). */
  lvSizes(): Promise<Map<string, number>>;
  /** LVs were created, grown or removed: the next question lists them again. */
  forgetListing(): void;
  /** Names LVs in this process's hold for the current work, activating them unless `activate` is false. */
  hold(names: readonly string[], activate?: boolean): Promise<void>;
  /** The LV joins the hold of VDI `vdi` when that VDI is active here. */
  joinVdiHold(vdi: string, name: string): Promise<void>;
}

/** Bytes of the LV holding the log of a disk of `size` bytes. */
export const logLvBytes = (size: number): number => roundUpToExtent(CBT_HEADER_SIZE + bitmapBytes(size));

export class LvmCbtLogs implements CbtLogStore {
  constructor(private readonly lvs: LogLvAccess) {}

  private name(uuid: string): string {
    if (!isUuid(uuid)) throw new Error(`not a uuid: ${uuid}`);
    return cbtLogLvName(uuid);
  }

  private device(name: string): string {
    return Lvm.lvPath(this.lvs.vg, name);
  }

  async has(uuid: string): Promise<boolean> {
    const name = this.name(uuid);
    return existsSync(this.device(name)) || (await this.lvs.lvSizes()).has(name);
  }

  async path(uuid: string): Promise<string> {
    const name = this.name(uuid);
    await this.lvs.hold([name]);
    return this.device(name);
  }

  async write(uuid: string, log: CbtLog): Promise<void> {
    const name = this.name(uuid);
    const needs = logLvBytes(log.size);
    const size = (await this.lvs.lvSizes()).get(name);
    if (size === undefined && !existsSync(this.device(name))) return this.create(uuid, name, log, needs);
    await this.lvs.hold([name]);
    if (size !== undefined && size < needs) {
      this.lvs.forgetListing();
      await this.lvs.lvm.lvresize(this.lvs.vg, name, needs);
    }
    await writeLog(this.device(name), log);
  }

  /** Written whole under a temporary name, then renamed: a crash leaves no half-made log. */
  private async create(uuid: string, name: string, log: CbtLog, bytes: number): Promise<void> {
    const tmp = name + TEMP_SUFFIX;
    // Named by this process's hold first: lvcreate makes it active, and a kill right after must not leak that.
    await this.lvs.hold([tmp, name], false);
    if ((await this.lvs.lvSizes()).has(tmp)) await this.lvs.lvm.lvremove(this.lvs.vg, tmp); // left by a crash
    this.lvs.forgetListing();
    await this.lvs.lvm.lvcreate(this.lvs.vg, tmp, bytes);
    await writeLog(this.device(tmp), log);
    faultPoint('cbt-log-lv-written');
    await this.lvs.lvm.lvrename(this.lvs.vg, tmp, name);
    // A log made for a VDI active here (enabled while it runs): its datapath keeps it until vdi_deactivate.
    await this.lvs.joinVdiHold(uuid, name);
  }

  async remove(uuid: string): Promise<void> {
    const name = this.name(uuid);
    const present = await this.lvs.lvSizes();
    this.lvs.forgetListing();
    for (const lv of [name + TEMP_SUFFIX, name]) {
      if (!present.has(lv) && !existsSync(this.device(lv))) continue;
      await this.lvs.lvm.lvremove(this.lvs.vg, lv).catch((e: unknown) => {
        if (!isNotFound(e)) throw e;
      });
    }
  }
}
