/**
 * LVM (lvm2) for one SR: every command carries a --config that confines LVM to
 * the SR's own devices, so it never scans, locks or activates anything else on
 * the host, and that works the same with or without udev running.
 */
import { ToolError } from './run.js';
import type { ToolResult } from './run.js';
import { runnerOf } from './tool.js';
import { udevRunning } from './udev.js';
import type { Runner, ToolContext } from './tool.js';
import { checkDevicePath, checkLvmName, checkLvmTag, InvalidArgumentError } from './validate.js';

/** Physical extent size used for SR volume groups; LV sizes are multiples of it. */
export const EXTENT_BYTES = 4 * 1024 * 1024;
/** PV metadata area: room for the metadata of thousands of LVs. */
export const PV_METADATA_BYTES = 10 * 1024 * 1024;
const DEFAULT_TIMEOUT_MS = 120_000;

export const vgNameForSr = (srUuid: string): string => `VG_XenStorage-${srUuid}`;
export const vhdLvName = (vdiUuid: string): string => `VHD-${vdiUuid}`;
export const rawLvName = (vdiUuid: string): string => `LV-${vdiUuid}`;
/** A VDI's changed-block log, named as the established LVHD names it. */
export const cbtLogLvName = (vdiUuid: string): string => `${vdiUuid}.cbtlog`;
export const MGT_LV = 'MGT';

export interface LvInfo {
  name: string;
  vg: string;
  sizeBytes: number;
  tags: string[];
  active: boolean;
  /** lv_attr as lvs prints it, e.g. "-wi-a-----". */
  attr: string;
}

export interface VgInfo {
  name: string;
  sizeBytes: number;
  freeBytes: number;
  extentBytes: number;
  tags: string[];
  pvCount: number;
  lvCount: number;
}

export interface PvInfo {
  device: string;
  /** "" when the PV is in no VG. */
  vg: string;
  sizeBytes: number;
  freeBytes: number;
}

export interface LvmOptions extends ToolContext {
  /** The only block devices LVM may look at (the SR's PVs): /dev paths, symlinks allowed. */
  devices: readonly string[];
  /** Whether udev creates /dev/VG/LV (default: whether udevd is running). */
  udev?: boolean;
}

export const roundUpToExtent = (bytes: number): number => Math.ceil(bytes / EXTENT_BYTES) * EXTENT_BYTES;

/** A literal path as an LVM filter regex: metacharacters in brackets (no backslashes in LVM strings). */
function literalRegex(path: string): string {
  return path.replace(/[.+]/g, (c) => `[${c}]`);
}

/**
 * The --config string. Notes per setting:
 * - filter/global_filter: accept only the SR's devices (a device is accepted
 *   when any of its names, e.g. a /dev/disk/by-id link, matches), reject the rest;
 * - use_devicesfile=0 (lvm2 >= 2.03.12): the filter, not /etc/lvm/devices, decides;
 * - obtain_device_list_from_udev=0, hints="none": scan /dev directly, no stale
 *   hint file; scan_lvs=0: never read PVs inside LVs (a guest's LVM in a VDI);
 * - use_lvmetad=0 for lvm2 2.02 hosts (2.03 ignores it);
 * - udev_sync/udev_rules follow whether udev runs: without udev, LVM makes the
 *   /dev nodes and links itself;
 * - backup=0 archive=0: the SR's metadata lives on its PVs; copies under /etc
 *   would go stale on every other host of a pool.
 */
export function lvmConfig(devices: readonly string[], udev: boolean): string {
  if (devices.length === 0) throw new InvalidArgumentError('devices', 'LVM needs at least one device to be confined to');
  const accept = devices.map((d) => `"a|^${literalRegex(checkDevicePath(d))}$|"`);
  const filter = `[ ${[...accept, '"r|.*|"'].join(', ')} ]`;
  const u = udev ? 1 : 0;
  return (
    `devices { filter = ${filter} global_filter = ${filter} use_devicesfile = 0` +
    ` obtain_device_list_from_udev = 0 hints = "none" scan_lvs = 0 }` +
    ` global { use_lvmetad = 0 }` +
    ` activation { udev_sync = ${u} udev_rules = ${u} }` +
    ` backup { backup = 0 archive = 0 }`
  );
}

const REPORT = ['--reportformat', 'json', '--units', 'b', '--nosuffix'];

export class Lvm {
  readonly config: string;
  readonly devices: readonly string[];
  private readonly run: Runner;
  private readonly timeoutMs: number;

  constructor(opts: LvmOptions) {
    this.devices = [...opts.devices];
    this.config = lvmConfig(this.devices, opts.udev ?? udevRunning());
    this.run = runnerOf(opts);
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /** /dev/VG/LV (a udev or LVM made link to the dm node). */
  static lvPath(vg: string, lv: string): string {
    return `/dev/${checkLvmName(vg, 'VG name')}/${checkLvmName(lv, 'LV name')}`;
  }

  /** /dev/mapper/VG-LV, "-" doubled in each part (device-mapper's own naming). */
  static dmPath(vg: string, lv: string): string {
    const esc = (s: string) => s.replace(/-/g, '--');
    return `/dev/mapper/${esc(checkLvmName(vg, 'VG name'))}-${esc(checkLvmName(lv, 'LV name'))}`;
  }

  /** Initialises devices (default: all of the SR's) as PVs, wiping what is on them. */
  async pvcreate(devices: readonly string[] = this.devices): Promise<void> {
    // -ff -y: SR creation overwrites whatever the LUN held, without a prompt
    await this.lvm('pvcreate', ['-ff', '-y', '--metadatasize', `${PV_METADATA_BYTES / 1048576}m`, ...devices.map((d) => checkDevicePath(d))]);
  }

  async vgcreate(vg: string, devices: readonly string[] = this.devices): Promise<void> {
    await this.lvm('vgcreate', ['-s', `${EXTENT_BYTES / 1048576}m`, checkLvmName(vg, 'VG name'), ...devices.map((d) => checkDevicePath(d))]);
  }

  /** Removes the VG and every LV in it. */
  async vgremove(vg: string): Promise<void> {
    await this.lvm('vgremove', ['-f', checkLvmName(vg, 'VG name')]);
  }

  /** Activates or deactivates every LV of the VG. */
  async vgchange(vg: string, active: boolean): Promise<void> {
    await this.lvm('vgchange', [active ? '-ay' : '-an', checkLvmName(vg, 'VG name')]);
  }

  /** The VGs visible on the SR's devices (or just `vg`). */
  async vgs(vg?: string): Promise<VgInfo[]> {
    const args = [...REPORT, '-o', 'vg_name,vg_size,vg_free,vg_extent_size,vg_tags,pv_count,lv_count'];
    if (vg !== undefined) args.push(checkLvmName(vg, 'VG name'));
    return parseVgsJson((await this.lvm('vgs', args)).stdout);
  }

  /** The PVs among the SR's devices. */
  async pvs(): Promise<PvInfo[]> {
    // no device arguments: the filter already limits pvs to the SR's devices
    const args = [...REPORT, '-o', 'pv_name,vg_name,pv_size,pv_free'];
    return parsePvsJson((await this.lvm('pvs', args)).stdout);
  }

  /** The LVs of `vg` (or the one LV `lv`). */
  async lvs(vg: string, lv?: string): Promise<LvInfo[]> {
    const target = lv === undefined ? checkLvmName(vg, 'VG name') : this.lvRef(vg, lv);
    return parseLvsJson((await this.lvm('lvs', [...REPORT, '-o', 'lv_name,vg_name,lv_size,lv_tags,lv_attr', target])).stdout);
  }

  /** One LV, or undefined when the VG has no such LV. */
  async lv(vg: string, lv: string): Promise<LvInfo | undefined> {
    try {
      return (await this.lvs(vg, lv))[0];
    } catch (e) {
      if (isNotFound(e) && /Failed to find logical volume/i.test((e as ToolError).stderr)) return undefined;
      throw e;
    }
  }

  /**
   * Creates an LV of at least `sizeBytes` (rounded up to the extent). An LV made
   * active is zeroed at its start; an inactive one (`active: false`) can't be.
   * Returns the size it got.
   */
  async lvcreate(vg: string, lv: string, sizeBytes: number, opts: { tags?: readonly string[]; active?: boolean } = {}): Promise<number> {
    const size = roundUpToExtent(checkSize(sizeBytes));
    const args = ['-y', '-n', checkLvmName(lv, 'LV name'), '-L', `${size}b`];
    for (const t of opts.tags ?? []) args.push('--addtag', checkLvmTag(t));
    if (opts.active === false) args.push('-an', '-Zn');
    args.push(checkLvmName(vg, 'VG name'));
    await this.lvm('lvcreate', args);
    return size;
  }

  async lvremove(vg: string, lv: string): Promise<void> {
    await this.lvm('lvremove', ['-f', this.lvRef(vg, lv)]);
  }

  async lvrename(vg: string, from: string, to: string): Promise<void> {
    await this.lvm('lvrename', [checkLvmName(vg, 'VG name'), checkLvmName(from, 'LV name'), checkLvmName(to, 'LV name')]);
  }

  /**
   * Inflates or deflates an LV to `sizeBytes` rounded up to the extent; a resize
   * to the size it has is a no-op. Returns the size it has afterwards.
   */
  async lvresize(vg: string, lv: string, sizeBytes: number): Promise<number> {
    const size = roundUpToExtent(checkSize(sizeBytes));
    try {
      // -f: deflating asks "really reduce?" otherwise (there is no filesystem to care about)
      await this.lvm('lvresize', ['-f', '-L', `${size}b`, this.lvRef(vg, lv)]);
    } catch (e) {
      if (!(e instanceof ToolError && /matches existing size/.test(e.stderr))) throw e;
    }
    return size;
  }

  async lvchange(vg: string, lv: string, active: boolean): Promise<void> {
    await this.setActive(vg, [lv], active);
  }

  /** Activates or deactivates several LVs of `vg` in one command (each LVM command costs a metadata read). */
  async setActive(vg: string, lvs: readonly string[], active: boolean): Promise<void> {
    if (lvs.length === 0) return;
    await this.lvm('lvchange', [active ? '-ay' : '-an', ...lvs.map((lv) => this.lvRef(vg, lv))]);
  }

  /**
   * Reloads active LVs' device-mapper tables from the VG's metadata as it is
   * now: another host may have resized them (one command for all).
   */
  async refresh(vg: string, lvs: readonly string[]): Promise<void> {
    if (lvs.length === 0) return;
    await this.lvm('lvchange', ['--refresh', ...lvs.map((lv) => this.lvRef(vg, lv))]);
  }

  /** Adds and deletes tags in one metadata update. */
  async lvtags(vg: string, lv: string, change: { add?: readonly string[]; del?: readonly string[] }): Promise<void> {
    const args: string[] = [];
    for (const t of change.add ?? []) args.push('--addtag', checkLvmTag(t));
    for (const t of change.del ?? []) args.push('--deltag', checkLvmTag(t));
    if (args.length === 0) return;
    await this.lvm('lvchange', [...args, this.lvRef(vg, lv)]);
  }

  addTag(vg: string, lv: string, tag: string): Promise<void> {
    return this.lvtags(vg, lv, { add: [tag] });
  }

  delTag(vg: string, lv: string, tag: string): Promise<void> {
    return this.lvtags(vg, lv, { del: [tag] });
  }

  private lvRef(vg: string, lv: string): string {
    return `${checkLvmName(vg, 'VG name')}/${checkLvmName(lv, 'LV name')}`;
  }

  private lvm(cmd: string, args: readonly string[]): Promise<ToolResult> {
    return this.run(cmd, ['--config', this.config, ...args], {
      timeoutMs: this.timeoutMs,
      // node passes no stray fds, but LVM would warn about any inherited one
      env: { LVM_SUPPRESS_FD_WARNINGS: '1' },
    });
  }
}

function checkSize(bytes: number): number {
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new InvalidArgumentError('size', 'must be a positive integer number of bytes', String(bytes));
  return bytes;
}

/** An LVM error saying the VG/LV/PV does not exist. */
export function isNotFound(e: unknown): boolean {
  return e instanceof ToolError && /not found|Failed to find|Cannot process volume group/i.test(e.stderr);
}

// --- report parsing (lvs/vgs/pvs --reportformat json --units b --nosuffix) ---

type Row = Record<string, string>;

function reportRows(json: string, kind: 'lv' | 'vg' | 'pv'): Row[] {
  const doc = JSON.parse(json) as { report?: Array<Record<string, Row[] | undefined>> };
  const rows: Row[] = [];
  for (const part of doc.report ?? []) rows.push(...(part[kind] ?? []));
  return rows;
}

const num = (s: string | undefined): number => (s === undefined || s === '' ? 0 : Number(s));
const tags = (s: string | undefined): string[] => (s ? s.split(',').filter(Boolean) : []);

export function parseLvsJson(json: string): LvInfo[] {
  return reportRows(json, 'lv').map((r) => ({
    name: r.lv_name ?? '',
    vg: r.vg_name ?? '',
    sizeBytes: num(r.lv_size),
    tags: tags(r.lv_tags),
    active: (r.lv_attr ?? '')[4] === 'a',
    attr: r.lv_attr ?? '',
  }));
}

export function parseVgsJson(json: string): VgInfo[] {
  return reportRows(json, 'vg').map((r) => ({
    name: r.vg_name ?? '',
    sizeBytes: num(r.vg_size),
    freeBytes: num(r.vg_free),
    extentBytes: num(r.vg_extent_size),
    tags: tags(r.vg_tags),
    pvCount: num(r.pv_count),
    lvCount: num(r.lv_count),
  }));
}

export function parsePvsJson(json: string): PvInfo[] {
  return reportRows(json, 'pv').map((r) => ({
    device: r.pv_name ?? '',
    vg: r.vg_name ?? '',
    sizeBytes: num(r.pv_size),
    freeBytes: num(r.pv_free),
  }));
}
