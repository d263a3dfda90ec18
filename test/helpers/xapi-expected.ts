// What xapi's database must hold for an SR as it is, derived from the SR's own
// state (its images, their VHD headers and our metadata records), and the check
// that the stand-in xapi (test/helpers/xapi-standin.ts: xapi itself cannot run
// here) holds exactly that. Written from the reference (xapi-callbacks.md §2,
// §4), not from lib/sr/xapi-sync.ts: every image is a VDI but those xapi was
// told to forget (see `forgotten`); a hidden image is an unmanaged base copy;
// an image with children is read-only; sm_config carries
// `vhd-parent` for a differencing image, the pass-through keys the toolstack
// gave, and `host_<ref>` while a host has the VDI active; nothing else.
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import type { SmEnv } from './sm.js';
import { activations, imagePath, readTree } from './sr-state.js';
import type { XapiStandin } from './xapi-standin.js';

const PASS_THROUGH = ['base_mirror', 'key_hash'];

/** The fields of a VDI record the SM is answerable for, as compared. */
export interface ExpectedVdi {
  uuid: string;
  location: string;
  type: string;
  managed: boolean;
  read_only: boolean;
  is_a_snapshot: boolean;
  /** `uuid:<u>` when the record's snapshot_of is the live record of VDI u, else `none` (xapi keeps a dangling ref once the VDI is gone). */
  snapshot_of: string;
  virtual_size: string;
  /** Left out for the VDIs in `staleSizes`. */
  physical_utilisation?: string;
  sm_config: Record<string, string>;
}

export interface DbCheckOptions {
  /** The SR's ref in the stand-in. */
  srRef: string;
  /** This host's ref (`host_<ref>` tags of the VDIs active here). */
  hostRef: string;
  /**
   * VDIs whose image changed since the SM last told xapi about them (data
   * written, a GC run): xapi learns physical_utilisation (and, after a GC,
   * virtual_size) only at the next verb on that VDI or the next sr_scan.
   */
  staleSizes?: ReadonlySet<string> | 'all';
  /**
   * VDIs xapi was told to forget while their image stays: deleted through
   * vdi_delete (a deleted VDI with children stays as a hidden base copy, and
   * xapi hears of that one at the next sr_scan), or hidden leaves an sr_scan
   * forgot. Any other hidden leaf is a base copy whose last child was deleted:
   * xapi keeps its record until the GC removes the image or a scan forgets it.
   */
  forgotten?: ReadonlySet<string>;
  /** VDIs a test changed behind the SM (hidden by hand): what xapi holds for them is not the SM's doing. */
  changedBehind?: ReadonlySet<string>;
}

interface RawRecord {
  managed: boolean;
  read_only: boolean;
  is_a_snapshot: boolean;
  snapshot_of: string;
  type?: string;
  sm_config?: Record<string, string>;
}

function readRecord(ctx: SmEnv, uuid: string): RawRecord | undefined {
  const file = path.join(ctx.location, '.sm', 'vdi', `${uuid}.json`);
  return fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, 'utf8')) as RawRecord) : undefined;
}

/** The VDI records xapi must hold for the SR as it is now, by location. */
export async function expectedVdis(ctx: SmEnv, xapi: XapiStandin, opts: DbCheckOptions): Promise<Map<string, ExpectedVdi>> {
  const nodes = await readTree(ctx);
  const active = activations(ctx);
  const out = new Map<string, ExpectedVdi>();
  for (const n of nodes.values()) {
    if (opts.forgotten?.has(n.uuid) || opts.changedBehind?.has(n.uuid)) continue;
    const rec = readRecord(ctx, n.uuid);
    if (!rec) throw new Error(`image ${n.uuid} has no record: the SR is not in a settled state`);
    const sm: Record<string, string> = {};
    for (const key of PASS_THROUGH) if (rec.sm_config?.[key] !== undefined) sm[key] = rec.sm_config[key];
    if (n.parent) sm['vhd-parent'] = n.parent;
    const here = active.get(n.uuid);
    if (here && here.host === ctx.hostId) sm[`host_${opts.hostRef}`] = here.writable ? 'RW' : 'RO';
    const source = rec.snapshot_of ? xapi.vdiByUuid(rec.snapshot_of) ?? xapi.vdis.get(rec.snapshot_of) : undefined;
    const stale = opts.staleSizes === 'all' || opts.staleSizes?.has(n.uuid);
    out.set(n.uuid, {
      uuid: n.uuid,
      location: n.uuid,
      type: rec.type || 'user',
      managed: rec.managed && !n.hidden,
      read_only: rec.read_only || n.hidden || n.children.length > 0,
      is_a_snapshot: rec.is_a_snapshot,
      snapshot_of: source ? `uuid:${String(source.uuid)}` : 'none',
      virtual_size: stale && opts.staleSizes === 'all' ? '(stale)' : String(n.virtualSize),
      ...(stale ? {} : { physical_utilisation: String(fs.statSync(imagePath(ctx, n.uuid)).size) }),
      sm_config: sm,
    });
  }
  return out;
}

/** The stand-in's records of the SR in the same form. */
export function heldVdis(xapi: XapiStandin, expected: Map<string, ExpectedVdi>, opts: DbCheckOptions): Map<string, ExpectedVdi> {
  const out = new Map<string, ExpectedVdi>();
  for (const rec of xapi.vdis.values()) {
    if (rec.SR !== opts.srRef) continue;
    const location = String(rec.location);
    if (opts.changedBehind?.has(location)) continue;
    const want = expected.get(location);
    const source = xapi.vdis.get(String(rec.snapshot_of));
    out.set(location, {
      uuid: String(rec.uuid),
      location,
      type: String(rec.type),
      managed: rec.managed as boolean,
      read_only: rec.read_only as boolean,
      is_a_snapshot: rec.is_a_snapshot as boolean,
      snapshot_of: source ? `uuid:${String(source.uuid)}` : 'none',
      virtual_size: want?.virtual_size === '(stale)' ? '(stale)' : String(rec.virtual_size),
      ...(want && want.physical_utilisation === undefined ? {} : { physical_utilisation: String(rec.physical_utilisation) }),
      sm_config: { ...(rec.sm_config as Record<string, string>) },
    });
  }
  return out;
}

/**
 * The stand-in holds exactly the VDI records xapi must hold for the SR as it
 * is (and the SR's virtual_allocation is the sum of its visible VDIs' sizes,
 * unless sizes are stale): `what` names the step in a failure.
 */
export async function assertDbInStep(t: ExecutionContext, ctx: SmEnv, xapi: XapiStandin, what: string, opts: DbCheckOptions): Promise<boolean> {
  const expected = await expectedVdis(ctx, xapi, opts);
  const held = heldVdis(xapi, expected, opts);
  const sorted = (m: Map<string, ExpectedVdi>) => Object.fromEntries([...m].sort(([a], [b]) => a.localeCompare(b)));
  let ok = t.deepEqual(sorted(held), sorted(expected), `${what}: xapi's VDI records are what the SR says`);
  if (opts.staleSizes !== 'all') {
    const nodes = await readTree(ctx);
    // A VDI hidden behind the SM still counts: xapi last heard of it visible.
    const visible = [...nodes.values()].filter((n) => !n.hidden || opts.changedBehind?.has(n.uuid)).reduce((sum, n) => sum + n.virtualSize, 0);
    ok = t.is(xapi.srs.get(opts.srRef)?.virtual_allocation, String(visible), `${what}: the SR's virtual_allocation is its visible VDIs' sizes`) && ok;
  }
  return ok;
}

/**
 * What a test knows of the SR's history that the state alone does not say:
 * which sizes xapi has not heard yet, which VDIs it was told to forget, which
 * the test changed behind the SM. A test tells it what it did; `assert`
 * then checks the stand-in's database after the step.
 */
export class XapiDbHistory {
  private stale: Set<string> | 'all' = new Set();
  private readonly forgotten = new Set<string>();
  private readonly changedBehind = new Set<string>();

  constructor(
    private readonly ctx: SmEnv,
    readonly xapi: XapiStandin,
    private readonly refs: { srRef: string; hostRef: string },
  ) {}

  /** The ref xapi holds for a VDI (what xapi sends as vdi_ref), if any. */
  refOf(uuid: string): string | undefined {
    return [...this.xapi.vdis.entries()].find(([, v]) => v.uuid === uuid)?.[0];
  }

  /** Data was written into the VDI: its image grew, and xapi hears of it at the next verb on it or scan. */
  wrote(uuid: string): void {
    if (this.stale !== 'all') this.stale.add(uuid);
  }

  /** The test hid the VDI's image by hand. */
  changed(uuid: string): void {
    this.changedBehind.add(uuid);
  }

  /** A verb ended well (`vdi`: the VDI it was called on). */
  async verbDone(verb: string, vdi?: string): Promise<void> {
    if (verb === 'sr_scan' || verb === 'sr_attach') {
      this.stale = new Set();
      this.changedBehind.clear();
      // The scan forgets hidden leaves (deleted VDIs waiting for the GC) and introduces every other image.
      this.forgotten.clear();
      for (const n of (await readTree(this.ctx)).values()) if (n.hidden && n.children.length === 0) this.forgotten.add(n.uuid);
      return;
    }
    if (!vdi) return;
    if (verb === 'vdi_delete') this.forgotten.add(vdi);
    // These rewrite the VDI's own record (the established `_db_update`).
    if (['vdi_snapshot', 'vdi_clone', 'vdi_resize', 'vdi_resize_online', 'vdi_update'].includes(verb) && this.stale !== 'all') this.stale.delete(vdi);
  }

  /** A collection ran: it tells xapi what it removed and each new vhd-parent, not the sizes it changed. */
  gcDone(): void {
    this.stale = 'all';
  }

  assert(t: ExecutionContext, what: string): Promise<boolean> {
    return assertDbInStep(t, this.ctx, this.xapi, what, { ...this.refs, staleSizes: this.stale, forgotten: this.forgotten, changedBehind: this.changedBehind });
  }
}
