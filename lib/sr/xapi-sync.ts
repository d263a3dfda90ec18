/**
 * What the toolstack's database must hear, written once: the verbs and the GC
 * call these after they changed the SR, so xapi's VDI and SR records say what
 * the images and our SR metadata say (shared/reference/xapi-callbacks.md §2,
 * §4). Our SR metadata stays the SR's own truth; xapi's records are derived
 * from it and from the images, never the other way round.
 *
 * Only reached when an endpoint exists (xapi-endpoint.ts chooses); standalone,
 * nothing here runs.
 */
import { getLog } from '../log/index.js';
import { allSettledOrThrow } from '../util/settle-all.js';
import { readImageSummary } from '../vhd/index.js';
import { isGone, NULL_REF, XapiFailure, type VdiIntroduce, type XapiSession, type XapiVdiRecord } from '../xapi/index.js';
import type { VdiRecord } from './metadata.js';
import { newVdiRecord } from './metadata.js';
import { uuidOfImageName, type ImageNode, type Repository } from './repository.js';
import type { SnapshotMade } from './snapshot.js';
import { unpauseLeftBehind } from './xapi-pause.js';

/** sm_config keys a VDI's record carries over from the toolstack's vdi_sm_config (the established pass-through fields). */
const PASS_THROUGH = ['base_mirror', 'key_hash'] as const;
/**
 * The sm_config keys this SM owns and rewrites. Every other key (paused,
 * host_*, activating, relinking, read-caching-*, key_hash ...) belongs to
 * someone else or is never removed, and a diff leaves it alone.
 */
const OWNED = ['vhd-parent'] as const;

/** The SR's sizes as xapi's record shows them (int64 as decimal strings); only the allocation when the record was not read. */
interface SrSizes {
  virtual_allocation: string;
  physical_size?: string;
  physical_utilisation?: string;
}

/** One VDI as xapi's record should show it. */
export interface VdiView {
  uuid: string;
  record: VdiRecord;
  virtualSize: number;
  physicalSize: number;
  parent?: string;
  readOnly: boolean;
  managed: boolean;
}

/** A ref xapi can take for a field typed Ref: what the toolstack sent, else the null ref. */
const refOrNull = (v: string) => (v.startsWith('OpaqueRef:') ? v : NULL_REF);

export class ToolstackDb {
  private srRefMemo: Promise<string> | undefined;
  /** VDI refs looked up during this call: a ref never changes while the record lives, and only this SM forgets ours. */
  private readonly refs = new Map<string, string>();
  /** Lookups of VDI refs in flight (a prefetch the verb awaits later). */
  private readonly refLookups = new Map<string, Promise<string | undefined>>();
  /** xapi's SR record read ahead (prefetch), for the one size update of this verb. */
  private srAhead: Promise<SrSizes> | undefined;
  /**
   * A VDI's record as read right after this verb set `paused` on it
   * (xapi-pause.ts): under the SR lock and paused, nothing else changes what
   * the record's update compares, so that update needs no read of its own and
   * sets only the fields whose value changes.
   */
  private readonly recordWhilePaused = new Map<string, XapiVdiRecord>();

  constructor(
    readonly xapi: XapiSession,
    readonly srUuid: string,
    private readonly given: { srRef?: string; hostRef?: string },
  ) {}

  /** This host, as the call names it (`host_ref`); the GC has none. */
  get hostRef(): string | undefined {
    return this.given.hostRef;
  }

  /** The SR's ref: as the call gave it, else looked up once. */
  srRef(): Promise<string> {
    this.srRefMemo ??= this.given.srRef ? Promise.resolve(this.given.srRef) : this.xapi.srByUuid(this.srUuid);
    return this.srRefMemo;
  }

  /**
   * Reads that do not depend on what the verb does go out at its start, while
   * it works on the images: a driver is a fresh process per call, and its
   * first XenAPI call (connecting, the client's code run for the first time)
   * is the slowest, so it is paid behind the disk work instead of after it.
   * `vdi`: the ref of the VDI the verb changes; `allocation`: the SR's
   * virtual_allocation, which the verb's size update adds its change to.
   * Called under the SR lock: no other verb changes those until the verb ends.
   * A failure here surfaces where the verb uses the value, as it would have
   * without the prefetch.
   */
  prefetch(what: { vdi?: { uuid: string; ref?: string | undefined }; allocation?: boolean }): void {
    if (what.vdi && !what.vdi.ref) quiet(this.refOf(what.vdi.uuid));
    if (what.allocation) {
      this.srAhead = this.srRef().then((sr) => this.xapi.srRecord(sr));
      quiet(this.srAhead);
    }
  }

  /** xapi's SR sizes: the record read ahead if there is one (used once: the update changes it), else the allocation read now. */
  private async srSizesNow(sr: string): Promise<SrSizes> {
    const ahead = this.srAhead;
    this.srAhead = undefined;
    return ahead ?? { virtual_allocation: String(await this.xapi.srVirtualAllocation(sr)) };
  }

  /** See recordWhilePaused: noted by the pause, dropped when the VDI is unpaused. */
  notePausedRecord(ref: string, record: XapiVdiRecord): void {
    this.recordWhilePaused.set(ref, record);
  }

  dropPausedRecord(ref: string): void {
    this.recordWhilePaused.delete(ref);
  }

  /**
   * Whether removing `key` from the VDI's other_config can change anything:
   * false only when the record read while paused shows no such key (removing
   * a key that is not there leaves the database as it is, so the call is not
   * made). Without that record, it may hold the key.
   */
  private mayHoldOtherConfig(ref: string, key: string): boolean {
    const paused = this.recordWhilePaused.get(ref);
    return !paused || paused.other_config?.[key] !== undefined;
  }

  // ------------------------------------------------------------ reading our side

  /** A VDI as it is now: its record (a default one if it has none) and its image. */
  async viewOf(repo: Repository, uuid: string): Promise<VdiView> {
    const [record, info] = await Promise.all([repo.vdiRecord(uuid), repo.info(uuid)]);
    return viewFrom(uuid, record, info);
  }

  /**
   * The same for an image this verb has just written: read as a scan reads
   * it (its footer and header: sizes, parent, hidden), not opened and
   * validated whole again; one step of the verb's answer fewer.
   */
  async viewOfWritten(repo: Repository, uuid: string): Promise<VdiView> {
    const [record, summary] = await Promise.all([repo.vdiRecord(uuid), repo.backend.withImagesActive([uuid], () => readImageSummary(repo.imagePath(uuid)))]);
    return viewFrom(uuid, record, summary);
  }

  /** The same from a scanned tree node: a parent of another image is read-only (its children read through it). */
  static viewOfNode(node: ImageNode, record: VdiRecord): VdiView {
    return {
      uuid: node.uuid,
      record,
      virtualSize: node.virtualSize,
      physicalSize: node.physicalSize,
      ...(node.parent ? { parent: node.parent } : {}),
      readOnly: record.read_only || node.hidden || node.children.length > 0,
      managed: record.managed && !node.hidden,
    };
  }

  // ------------------------------------------------------------------- VDIs

  /**
   * `VDI.db_introduce` with the 19 arguments, in the established order. Returns the new ref.
   * `snapshotOf`: the ref of the VDI our record's `snapshot_of` names, when xapi has one
   * (xapi sets the same after a snapshot; a scan that re-introduces a snapshot keeps the link).
   */
  async introduce(view: VdiView, snapshotOf?: string): Promise<string> {
    const r = view.record;
    const fields: VdiIntroduce = {
      uuid: view.uuid,
      name_label: r.name_label,
      name_description: r.name_description,
      SR: await this.srRef(),
      type: r.type || 'user',
      sharable: false,
      read_only: view.readOnly,
      other_config: {},
      location: view.uuid,
      xenstore_data: {},
      sm_config: smConfigOf(view),
      managed: view.managed,
      virtual_size: view.virtualSize,
      physical_utilisation: view.physicalSize,
      metadata_of_pool: refOrNull(r.metadata_of_pool),
      is_a_snapshot: r.is_a_snapshot,
      snapshot_time: r.snapshot_time,
      snapshot_of: snapshotOf ?? refOrNull(r.snapshot_of),
      cbt_enabled: false,
    };
    const ref = await this.xapi.vdiIntroduce(fields);
    this.refs.set(view.uuid, ref);
    getLog().info(`XenAPI: VDI ${view.uuid} introduced${view.managed ? '' : ' (unmanaged base copy)'}`);
    return ref;
  }

  /** The VDI's ref, or undefined when xapi has no record of it. */
  async refOf(uuid: string, given?: string): Promise<string | undefined> {
    const known = given ?? this.refs.get(uuid);
    if (known) return known;
    const inFlight = this.refLookups.get(uuid);
    if (inFlight) return inFlight;
    const lookup = this.xapi
      .vdiByUuid(uuid)
      .catch((err: unknown) => {
        if (isGone(err)) return undefined;
        throw err;
      })
      .then((ref) => {
        if (ref) this.refs.set(uuid, ref);
        return ref;
      })
      .finally(() => this.refLookups.delete(uuid));
    this.refLookups.set(uuid, lookup);
    return lookup;
  }

  /** `db_forget`; a VDI xapi already lost is fine (the established `forget_vdi` ignores it too). */
  async forget(uuid: string, ref?: string): Promise<void> {
    const r = ref ?? (await this.refOf(uuid));
    if (!r) return;
    await this.xapi.vdiForget(r).catch((err: unknown) => {
      if (!isGone(err)) throw err;
    });
    this.refs.delete(uuid);
    getLog().info(`XenAPI: VDI ${uuid} forgotten`);
  }

  /**
   * The established `_db_update`: sizes, read_only, the owned sm_config keys
   * (removed, then added: add_to_* refuses a key that is there) and
   * cbt_enabled. With `current` (a scan), nothing is written when in step.
   */
  async update(ref: string, view: VdiView, current?: XapiVdiRecord): Promise<boolean> {
    if (current && inStep(view, current)) return false;
    const paused = current ? undefined : this.recordWhilePaused.get(ref);
    this.recordWhilePaused.delete(ref); // this update changes it
    const known = current ? (current.sm_config ?? {}) : paused?.sm_config;
    // A field the record read while paused shows at its value already is not set again (the database is the same).
    const changes = (field: string, value: string | boolean) => !paused || (typeof value === 'boolean' ? Boolean(paused[field]) !== value : String(paused[field]) !== value);
    // Each call writes a field of its own: they go out together, the sm_config keys in their order (removed, then added).
    const setters = [
      changes('virtual_size', String(view.virtualSize)) && this.xapi.vdiSetVirtualSize(ref, view.virtualSize),
      changes('physical_utilisation', String(view.physicalSize)) && this.xapi.vdiSetPhysicalUtilisation(ref, view.physicalSize),
      changes('read_only', view.readOnly) && this.xapi.vdiSetReadOnly(ref, view.readOnly),
      changes('cbt_enabled', false) && this.xapi.vdiSetCbtEnabled(ref, false),
    ].filter((call): call is Promise<void> => call !== false);
    const have = known ?? (await allSettledOrThrow([this.xapi.vdiSmConfig(ref), ...setters] as const))[0];
    const want = smConfigOf(view);
    const stale = OWNED.filter((key) => have[key] !== undefined && have[key] !== want[key]);
    const missing = Object.entries(want).filter(([key, value]) => {
      if (have[key] === value) return false;
      return have[key] === undefined || (OWNED as readonly string[]).includes(key); // a key not ours is never changed
    });
    const add = () => missing.map(([key, value]) => this.xapi.vdiAddToSmConfig(ref, key, value));
    // A key is added only once its stale value is removed; with nothing to remove, the adds go with the setters.
    await allSettledOrThrow([...(known ? setters : []), ...stale.map((key) => this.xapi.vdiRemoveFromSmConfig(ref, key)), ...(stale.length === 0 ? add() : [])]);
    if (stale.length > 0) await allSettledOrThrow(add());
    return true;
  }

  /**
   * After a snapshot or clone (§2): the new VDI and, unless the snapshot is
   * the old image itself (`single`), the base copy (unmanaged) are
   * introduced; the VDI's own record gets its new `vhd-parent`; the SR's
   * sizes follow; and `leaf-coalesce` is cleared on the VDI, as the
   * established SM does for a snapshot not mirrored elsewhere.
   * `unpauseWith`: the VDI's `paused` goes out with these calls (xapi-pause.ts UnpauseWith).
   */
  async snapshotTaken(repo: Repository, vdi: string, made: SnapshotMade, vdiRef?: string, unpauseWith?: () => Promise<void>): Promise<void> {
    // `paused` goes first, before anything is read: activations elsewhere wait for its removal.
    const unpaused = unpauseWith?.();
    // The new records do not depend on each other, nor on the VDI's own record or the SR's: each call goes
    // out as soon as what it says has been read from disk, none waits for the others.
    const ref = this.refOf(vdi, vdiRef);
    const leaf = this.viewOfWritten(repo, vdi);
    const snapView = this.viewOfWritten(repo, made.snap);
    const introduced = (view: Promise<VdiView>) =>
      Promise.all([view, ref]).then(([v, r]) => this.introduce(v, v.record.snapshot_of === vdi ? r : undefined));
    await allSettledOrThrow([
      ...(unpaused ? [unpaused] : []),
      introduced(snapView),
      // A `single` snapshot's base is the snapshot itself.
      made.base !== made.snap && introduced(this.viewOfWritten(repo, made.base)),
      Promise.all([ref, leaf]).then(([r, l]) => {
        if (!r) return undefined;
        const clearLeafCoalesce = this.mayHoldOtherConfig(r, 'leaf-coalesce'); // asked before the update drops the record read while paused
        return allSettledOrThrow([this.update(r, l), clearLeafCoalesce && this.xapi.vdiRemoveFromOtherConfig(r, 'leaf-coalesce')]);
      }),
      snapView.then((v) => this.updateSr(repo, { delta: v.virtualSize })),
    ]);
  }

  /**
   * The GC changed an image's parent (relink, leaf-coalesce): its record's
   * `vhd-parent` follows, through sm_config only, as the established
   * collector's `_setParent` (remove, then add). A VDI xapi has no record of is left alone.
   */
  async parentChanged(uuid: string, parent: string | undefined): Promise<void> {
    const ref = await this.refOf(uuid);
    if (!ref) return;
    this.recordWhilePaused.delete(ref);
    await this.xapi.vdiRemoveFromSmConfig(ref, 'vhd-parent');
    if (parent) await this.xapi.vdiAddToSmConfig(ref, 'vhd-parent', parent);
  }

  /**
   * The established `_update` + `_db_update` of the SR: its sizes as strings.
   * `allocation` is either a change to xapi's virtual_allocation (a verb) or
   * the whole new figure (a scan: the non-hidden VDIs' virtual sizes).
   */
  async updateSr(repo: Repository, allocation: { delta: number } | { total: number }): Promise<void> {
    const sr = await this.srRef();
    const [now, { free, total }] = await Promise.all(['total' in allocation ? undefined : this.srSizesNow(sr), repo.backend.space()]);
    const valloc = 'total' in allocation ? allocation.total : Number(now!.virtual_allocation) + allocation.delta;
    // A size the record read ahead shows at its value already is not set again (the database is the same).
    const readAhead = now?.physical_size !== undefined;
    const changes = (field: keyof SrSizes, value: number) => !readAhead || now![field] !== String(Math.trunc(value));
    await allSettledOrThrow([
      changes('virtual_allocation', Math.max(0, valloc)) && this.xapi.srSetVirtualAllocation(sr, Math.max(0, valloc)),
      changes('physical_size', total) && this.xapi.srSetPhysicalSize(sr, total),
      changes('physical_utilisation', total - free) && this.xapi.srSetPhysicalUtilisation(sr, total - free),
    ]);
  }

  /**
   * sr_attach: tags a crash or a lost host left are cleared (the established
   * `resetvdis.reset_sr`): this host's `host_<ref>` on every VDI of the SR and,
   * on the master, `paused`; the master then marks the SR dirty so xapi scans it.
   */
  async resetOnAttach(master: boolean): Promise<void> {
    const sr = await this.srRef();
    const host = this.given.hostRef;
    for (const [ref, vdi] of Object.entries(await this.xapi.vdisOfSr(sr))) {
      if (host && vdi.sm_config?.[`host_${host}`] !== undefined) await this.xapi.vdiRemoveFromSmConfig(ref, `host_${host}`);
      if (master && vdi.sm_config?.paused !== undefined) await this.xapi.vdiRemoveFromSmConfig(ref, 'paused');
    }
    if (master) {
      await this.xapi.srAddToOtherConfig(sr, 'dirty', '').catch((err: unknown) => {
        if (!(err instanceof XapiFailure && err.code === 'MAP_DUPLICATE_KEY')) throw err; // already dirty
      });
    }
  }

  /**
   * sr_scan (§4): the images present are compared with xapi's records of the
   * SR, keyed by location. New ones are introduced, gone ones forgotten, the
   * rest updated where they differ; in that order, as the established scan.
   * Hidden leaves (deleted VDIs waiting for the GC) are not VDIs; hidden
   * images with children are unmanaged base copies. Images whose state is
   * unknown now (unreadable, damaged record, a change in progress) are
   * neither introduced, forgotten nor updated.
   */
  async syncScan(repo: Repository, scan: { nodes: Map<string, ImageNode>; records: Map<string, VdiRecord>; unsettled: Set<string> }): Promise<{ introduced: number; forgotten: number; updated: number }> {
    const sr = await this.srRef();
    const wanted = new Map<string, VdiView>();
    for (const node of scan.nodes.values()) {
      if (node.unreadable !== undefined || scan.unsettled.has(node.uuid)) continue;
      if (node.hidden && node.children.length === 0) continue;
      const record = scan.records.get(node.uuid);
      if (record) wanted.set(node.uuid, ToolstackDb.viewOfNode(node, record));
    }
    const known = new Map<string, [string, XapiVdiRecord]>();
    for (const [ref, rec] of Object.entries(await this.xapi.vdisOfSr(sr))) known.set(rec.location, [ref, rec]);

    let introduced = 0;
    let forgotten = 0;
    let updated = 0;
    for (const [ref, rec] of known.values()) this.refs.set(rec.uuid, ref);
    for (const view of sourcesFirst([...wanted].filter(([location]) => !known.has(location)).map(([, view]) => view))) {
      await this.introduce(view, this.refs.get(view.record.snapshot_of));
      introduced++;
    }
    for (const [location, [ref, rec]] of known) {
      if (wanted.has(location) || scan.unsettled.has(location)) continue;
      // Gone, or a hidden leaf (deleted, waiting for the GC); any other image present is in an unknown state now.
      const node = scan.nodes.get(location);
      if (node && !(node.hidden && node.children.length === 0 && node.unreadable === undefined)) continue;
      await this.forget(rec.uuid, ref);
      forgotten++;
    }
    for (const [location, view] of wanted) {
      const entry = known.get(location);
      if (entry && (await this.update(entry[0], view, entry[1]))) updated++;
    }
    // Pauses are taken only under the SR lock, which this scan holds: a `paused` left now is a killed verb's.
    for (const [ref, rec] of known.values()) {
      if (rec.sm_config?.paused === undefined || !scan.nodes.has(rec.location)) continue;
      await unpauseLeftBehind(this, rec.uuid, ref, rec.sm_config);
    }
    const allocation = [...scan.nodes.values()].filter((n) => !n.hidden && n.unreadable === undefined).reduce((sum, n) => sum + n.virtualSize, 0);
    await this.updateSr(repo, { total: allocation });
    getLog().info(`XenAPI: scan of SR ${this.srUuid} in step: ${introduced} introduced, ${forgotten} forgotten, ${updated} updated`);
    return { introduced, forgotten, updated };
  }
}

function viewFrom(uuid: string, record: VdiRecord | undefined, image: { virtualSize: number; physicalSize: number; hidden: boolean; parentName?: string | undefined }): VdiView {
  const rec = record ?? newVdiRecord(uuid);
  const parent = image.parentName === undefined ? undefined : uuidOfImageName(image.parentName);
  return { uuid, record: rec, virtualSize: image.virtualSize, physicalSize: image.physicalSize, ...(parent ? { parent } : {}), readOnly: rec.read_only || image.hidden, managed: rec.managed && !image.hidden };
}

/** New VDIs in an order that introduces a snapshot after the VDI it is a snapshot of, so that its `snapshot_of` can name it. */
function sourcesFirst(views: VdiView[]): VdiView[] {
  const out: VdiView[] = [];
  let pending = views;
  while (pending.length > 0) {
    const waiting = new Set(pending.map((v) => v.uuid));
    const ready = pending.filter((v) => !waiting.has(v.record.snapshot_of));
    const next = ready.length > 0 ? ready : pending; // a cycle cannot happen; if it did, nothing is held back
    out.push(...next);
    pending = pending.filter((v) => !next.includes(v));
  }
  return out;
}

/** The sm_config xapi's record should carry: the pass-through keys of our record, and the parent of a differencing image. */
function smConfigOf(view: VdiView): Record<string, string> {
  const out: Record<string, string> = {};
  for (const key of PASS_THROUGH) if (view.record.sm_config[key] !== undefined) out[key] = view.record.sm_config[key];
  if (view.parent) out['vhd-parent'] = view.parent;
  return out;
}

/** The established `in_sync_with_xenapi_record`: managed and the name are not compared. */
function inStep(view: VdiView, rec: XapiVdiRecord): boolean {
  if (rec.location !== view.uuid || Boolean(rec.read_only) !== view.readOnly) return false;
  if (String(rec.virtual_size) !== String(view.virtualSize) || String(rec.physical_utilisation) !== String(view.physicalSize)) return false;
  if (Boolean(rec.cbt_enabled)) return false;
  const want = smConfigOf(view);
  const have = rec.sm_config ?? {};
  for (const key of OWNED) if (have[key] !== want[key]) return false;
  return Object.entries(want).every(([k, v]) => have[k] === v);
}

/** A read started ahead: its failure is seen where it is awaited, never as an unhandled rejection. */
function quiet(read: Promise<unknown>): void {
  read.catch(() => undefined);
}
