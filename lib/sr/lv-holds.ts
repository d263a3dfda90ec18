/**
 * Which images of an LVM SR are held active on this host, and by whom, so an
 * LV shared by several chains (a base under clones and snapshots) stays active
 * while anyone needs it and is deactivated when the last holder lets go.
 *
 * A holder is one small file in `run/sm/lvhold/<sr>/`, written atomically:
 * - `vdi-<uuid>.json`: vdi_activate's hold on the VDI's chain, until
 *   vdi_deactivate. Valid while the VDI's attach state says active.
 * - `tmp-<pid>-<id>.json`: a process's hold for the duration of some work
 *   (a verb, a GC run). Valid while that process runs (pid and start time, so a
 *   reused pid does not keep a dead holder alive).
 * A holder names an image by its uuid and a changed-block log by its LV's
 * name (`<uuid>.cbtlog`, and `<uuid>.cbtlog.tmp` while it is being made).
 * An LV's refcount is the number of holders naming it. It is derived from
 * the files, never stored, so no count can drift; a holder that nothing backs
 * any more is dropped by settle(), so none can keep an LV active forever.
 *
 * Order, so that a kill at any instant is safe: a holder names an LV before the
 * LV is activated (a killed holder's LVs are found and deactivated), and the LV
 * is deactivated before the holder stops naming it (nothing active is left
 * unnamed). Every change of a holder and the LVM call it implies run under the
 * SR's `lvhold` lock, so no holder deactivates an LV another has just claimed.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readdir, readFile, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { getLog } from '../log/index.js';
import { sweepAtomicTemps, writeFileAtomic } from './atomic-write.js';
import { isUuid } from './ids.js';
import { lockOrFail } from './lock.js';
import { runStateDir } from './paths.js';

const LOCK_TIMEOUT_MS = Number(process.env.SM_LOCK_TIMEOUT_MS ?? 60_000);

/** The LVM side: which images' LVs are active, and switching them (one command for many). */
export interface LvSwitch {
  active(): Promise<Set<string>>;
  activate(uuids: string[]): Promise<void>;
  deactivate(uuids: string[]): Promise<void>;
}

interface HolderRecord {
  lvs: string[];
  /** Temp holders: the owning process. */
  pid?: number;
  started?: string;
}

const VDI_HOLDER = /^vdi-([0-9a-f-]{36})\.json$/;
const TEMP_HOLDER = /^tmp-\d+-[0-9a-f]+\.json$/;
const LOG_KEY = /^([0-9a-f-]{36})\.cbtlog(\.tmp)?$/;

/** What a holder may name: an image's uuid, or a changed-block log's LV name. */
export function isHoldKey(key: string): boolean {
  return isUuid(key) || isUuid(LOG_KEY.exec(key)?.[1] ?? '');
}

export const lvHoldDir = (sr: string): string => runStateDir('lvhold', sr);

/** Forgets every hold of the SR: after sr_detach deactivated the whole VG. */
export async function resetLvHolds(sr: string): Promise<void> {
  await rm(lvHoldDir(sr), { recursive: true, force: true });
}

/** The start time of a process (clock ticks after boot, /proc/<pid>/stat field 22); undefined without /proc. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

const myStart = processStartTime(process.pid);

function processAlive(pid: number, started: string | undefined): boolean {
  if (pid === process.pid) return started === undefined || started === myStart;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  return started === undefined || processStartTime(pid) === started;
}

export class LvHolds {
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    readonly sr: string,
    private readonly lvs: LvSwitch,
  ) {}

  get dir(): string {
    return lvHoldDir(this.sr);
  }

  /** Every holder by file name. */
  async holders(): Promise<Map<string, HolderRecord>> {
    const out = new Map<string, HolderRecord>();
    for (const name of (await readdir(this.dir).catch(() => [] as string[])).sort()) {
      if (!VDI_HOLDER.test(name) && !TEMP_HOLDER.test(name)) continue; // atomic-write temps
      const text = await readFile(join(this.dir, name), 'utf8').catch(() => undefined);
      if (text === undefined) continue;
      try {
        out.set(name, JSON.parse(text) as HolderRecord);
      } catch {
        out.set(name, { lvs: [] }); // cannot happen with atomic writes; holds nothing
      }
    }
    return out;
  }

  /** How many holders hold each image. */
  async counts(): Promise<Map<string, number>> {
    const counts = new Map<string, number>();
    for (const h of (await this.holders()).values()) for (const u of new Set(h.lvs)) counts.set(u, (counts.get(u) ?? 0) + 1);
    return counts;
  }

  /** vdi_activate: the VDI's holder names exactly `chain` (so a second call counts once), all active. */
  async holdVdi(vdi: string, chain: readonly string[]): Promise<void> {
    await this.locked(async () => {
      const name = `vdi-${vdi}.json`;
      const holders = await this.holders();
      const before = holders.get(name)?.lvs ?? [];
      const dropped = before.filter((u) => !chain.includes(u));
      // A chain that changed since the last call: what it no longer names may go, but stays named until it is inactive.
      await this.write(name, { lvs: [...new Set([...chain, ...dropped])] });
      await this.activateMissing(chain);
      if (dropped.length === 0) return;
      holders.set(name, { lvs: [...chain] });
      await this.deactivateUnheld(dropped, holders);
      await this.write(name, { lvs: [...new Set(chain)] });
    });
  }

  /**
   * The VDI's LVs that no other holder names are deactivated, its holder kept
   * as it is (the VDI stays active; holdVdi() activates its chain again).
   * Unlike a release, a failure throws: the caller must not go on.
   */
  async idleVdi(vdi: string): Promise<void> {
    await this.locked(async () => {
      const holders = await this.holders();
      const name = `vdi-${vdi}.json`;
      const mine = holders.get(name);
      if (!mine) return;
      holders.delete(name);
      await this.deactivateUnheld(mine.lvs, holders, true);
    });
  }

  /** Adds `keys` to the hold of VDI `vdi` when it is held here (an LV made for an active VDI: its log). */
  async joinVdi(vdi: string, keys: readonly string[]): Promise<void> {
    await this.locked(async () => {
      const name = `vdi-${vdi}.json`;
      const h = (await this.holders()).get(name);
      const fresh = keys.filter((k) => !h?.lvs.includes(k));
      if (h && fresh.length > 0) await this.write(name, { ...h, lvs: [...h.lvs, ...fresh] });
    });
  }

  /** vdi_deactivate: the VDI's LVs that no other holder names are deactivated. */
  async releaseVdi(vdi: string): Promise<void> {
    await this.release(`vdi-${vdi}.json`);
  }

  /** A hold of this process, for some work; nothing is written until the first add(). */
  temp(): TempHold {
    return new TempHold(this, `tmp-${process.pid}-${randomBytes(4).toString('hex')}.json`);
  }

  /** An LV renamed `from` -> `to`: every holder naming `from` names `to` too (before the rename). */
  async follow(from: string, to: string): Promise<void> {
    await this.locked(async () => {
      for (const [name, h] of await this.holders()) {
        if (h.lvs.includes(from) && !h.lvs.includes(to)) await this.write(name, { ...h, lvs: [...h.lvs, to] });
      }
    });
  }

  /**
   * Drops the holders nothing backs any more (their process is gone, their VDI
   * is no longer active) and deactivates their LVs that no one else holds;
   * with `all`, every active image no holder names (sr_attach). Returns the
   * holders dropped.
   */
  async settle(isVdiActive: (vdi: string) => Promise<boolean>, all = false): Promise<string[]> {
    await sweepAtomicTemps(this.dir);
    return this.locked(async () => {
      const holders = await this.holders();
      const stale: string[] = [];
      for (const [name, h] of holders) {
        const vdi = VDI_HOLDER.exec(name)?.[1];
        const backed = vdi ? await isVdiActive(vdi) : h.pid !== undefined && processAlive(h.pid, h.started);
        if (!backed) stale.push(name);
      }
      const candidates = all ? [...(await this.lvs.active())] : stale.flatMap((n) => holders.get(n)!.lvs);
      for (const n of stale) holders.delete(n);
      await this.deactivateUnheld(candidates, holders);
      for (const n of stale) {
        await unlink(join(this.dir, n)).catch(() => undefined);
        getLog().info(`SR ${this.sr}: LV hold ${n.slice(0, -'.json'.length)} released: its ${n.startsWith('vdi-') ? 'VDI is no longer active' : 'process is gone'}`);
      }
      return stale;
    });
  }

  /** Adds `uuids` to holder `name` (created if missing); with `activate`, activates those not active. */
  async add(name: string, uuids: readonly string[], activate: boolean): Promise<void> {
    await this.locked(async () => {
      const h = (await this.holders()).get(name) ?? { lvs: [], pid: process.pid, started: myStart };
      const fresh = uuids.filter((u) => !h.lvs.includes(u));
      if (fresh.length > 0) await this.write(name, { ...h, lvs: [...h.lvs, ...new Set(fresh)] });
      if (activate) await this.activateMissing(uuids);
    });
  }

  /** Deactivates the holder's LVs no other holder names, then removes the holder. Never throws: cleanup only. */
  async release(name: string): Promise<void> {
    try {
      await this.locked(async () => {
        const holders = await this.holders();
        const mine = holders.get(name);
        if (!mine) return;
        holders.delete(name);
        await this.deactivateUnheld(mine.lvs, holders);
        await unlink(join(this.dir, name)).catch(() => undefined);
      });
    } catch (e) {
      // The holder stays; settle() drops it once its owner is gone.
      getLog().warn(`SR ${this.sr}: LV hold ${name} not released: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  async allActive(uuids: readonly string[]): Promise<boolean> {
    const active = await this.lvs.active();
    return uuids.every((u) => active.has(u));
  }

  private async activateMissing(uuids: readonly string[]): Promise<void> {
    const active = await this.lvs.active();
    const missing = [...new Set(uuids)].filter((u) => !active.has(u));
    if (missing.length > 0) await this.lvs.activate(missing);
  }

  /** Of `uuids`, deactivates the active ones no holder in `others` names. A failure is logged (the LV only stays active), or thrown when `strict`. */
  private async deactivateUnheld(uuids: readonly string[], others: Map<string, HolderRecord>, strict = false): Promise<void> {
    const held = new Set([...others.values()].flatMap((h) => h.lvs));
    const active = await this.lvs.active();
    const idle = [...new Set(uuids)].filter((u) => active.has(u) && !held.has(u));
    if (idle.length === 0) return;
    await this.lvs.deactivate(idle).catch((e: Error) => {
      if (strict) throw e;
      getLog().warn(`SR ${this.sr}: could not deactivate ${idle.join(', ')}: ${e.message}`);
    });
  }

  private async write(name: string, h: HolderRecord): Promise<void> {
    await writeFileAtomic(join(this.dir, name), JSON.stringify(h) + '\n');
  }

  /** One change at a time in this process, and host-wide under the SR's lvhold lock. */
  private locked<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(async () => {
      const lock = await lockOrFail(this.sr, 'lvhold', LOCK_TIMEOUT_MS);
      try {
        return await fn();
      } finally {
        await lock.release();
      }
    });
    this.queue = run.catch(() => undefined);
    return run;
  }
}

/** A process's hold for some work: grows with what the work touches, released as a whole. */
export class TempHold {
  private readonly held = new Set<string>();

  constructor(
    private readonly holds: LvHolds,
    readonly name: string,
  ) {}

  /** Holds `uuids` and activates those not active; with `activate: false` only names them (an LV about to be created active). */
  async add(uuids: readonly string[], activate = true): Promise<void> {
    const valid = uuids.filter((u) => isHoldKey(u));
    if (valid.length === 0) return;
    // Already ours and active: nobody else deactivates what this hold names, so no lock is needed.
    if (valid.every((u) => this.held.has(u)) && (!activate || (await this.holds.allActive(valid)))) return;
    // Marked first: if the activation fails after the holder was written, release() must still remove it.
    for (const u of valid) this.held.add(u);
    await this.holds.add(this.name, valid, activate);
  }

  has(uuid: string): boolean {
    return this.held.has(uuid);
  }

  async release(): Promise<void> {
    if (this.held.size === 0) return;
    await this.holds.release(this.name);
    this.held.clear();
  }
}
