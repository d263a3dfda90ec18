// Crash tests over the real driver: a verb killed (SIGKILL) at a fault point or
// at a random instant, recovered as a host would (sr_attach or sr_scan), the
// model updated from what the crash committed, then the full invariants and a
// proof the SR is still usable (a snapshot, a write, a delete, a GC).
import type { ExecutionContext } from 'ava';
import { MiB, SparseDisk } from './model.js';
import { callDriver, createArgs, gc, makeSmEnv, request, type CallOptions, type SmEnv, type XmlCallResult } from './sm.js';
import { hostLeftovers, journals, listImages, readMetadata, readTree } from './sr-state.js';
import { World } from './world.js';

/** What existed before a killed call: the images and the metadata records. */
export interface Before {
  images: string[];
  records: string[];
}

export interface FaultCase {
  /** SM_FAULT value: `<point>` or `<point>:<n>`. */
  point: string;
  verb: string;
  extra: Record<string, unknown>;
  /** Updates the model once recovery is done (throws if the outcome is not one the crash allows). */
  outcome(w: World, before: Before): Promise<void>;
}

export const V_SIZE = 16 * MiB;

/** An SR holding V (written, snapshotted as S0, written again) for `fn`. */
export async function withSr(fn: (w: World, ctx: SmEnv) => Promise<void>): Promise<void> {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx);
  try {
    await w.create('V', V_SIZE);
    await w.fill('V', 0, 3 * MiB);
    await w.snapshot('V', 'S0');
    await w.fill('V', 5 * MiB + 100, 2 * MiB);
    await fn(w, ctx);
  } finally {
    await w.close();
    await ctx.cleanup();
  }
}

export function before(ctx: SmEnv): Before {
  return { images: listImages(ctx), records: Object.keys(readMetadata(ctx).vdis) };
}

/** Images and records that appeared since `before`. */
export function added(ctx: SmEnv, b: Before) {
  const meta = readMetadata(ctx);
  return {
    images: listImages(ctx).filter((u) => !b.images.includes(u)),
    records: Object.keys(meta.vdis).filter((u) => !b.records.includes(u)),
    meta,
  };
}

/** Recovery as a host does it after a crash: re-attach (even numbers) or scan. */
export async function recoverAsHost(w: World, i: number): Promise<'sr_attach' | 'sr_scan'> {
  const by = i % 2 === 0 ? 'sr_attach' : 'sr_scan';
  await w.s.call(by);
  return by;
}

/** Every invariant after recovery, then the SR used: a snapshot, a write, the snapshot deleted, a GC. */
export async function assertRecoveredAndUsable(t: ExecutionContext, w: World, what: string, i: number, scanned: boolean): Promise<void> {
  t.deepEqual(journals(w.ctx), [], `${what}: recovered`);
  await w.check(t, { scanned });
  t.deepEqual(hostLeftovers(w.ctx), [], `${what}: nothing left behind on the host`);
  const name = `after-${i}`;
  await w.snapshot('V', name);
  await w.fill('V', (i % 6) * 2 * MiB + 4096, MiB);
  await w.delete(name);
  const r = await gc(w.ctx);
  t.is(r.code, 0, `${what}: a GC runs after recovery`);
  await w.scan();
  await w.check(t, { scanned: true });
}

/** One verb called as a toolstack does, with a fault point or a kill instant. */
export function callVerb(w: World, verb: string, extra: Record<string, unknown>, env: NodeJS.ProcessEnv = w.ctx.env, opts: CallOptions = {}): Promise<XmlCallResult> {
  return callDriver(verb, request(w.ctx, verb, extra), env, opts);
}

/** Each case: the verb killed at its fault point, recovered, checked, the SR used again. */
export async function runFaults(t: ExecutionContext, w: World, cases: FaultCase[]): Promise<void> {
  for (const [i, c] of cases.entries()) {
    const b = before(w.ctx);
    const killed = await callVerb(w, c.verb, c.extra, { ...w.ctx.env, SM_FAULT: c.point });
    t.is(killed.signal, 'SIGKILL', `${c.point}: the driver died by SIGKILL (exit ${killed.code}: ${killed.stderr})`);
    t.is(killed.stdout, '', `${c.point}: no response was sent`);
    t.true(journals(w.ctx).length > 0, `${c.point}: the change was journaled`);
    const by = await recoverAsHost(w, i);
    await c.outcome(w, b);
    await assertRecoveredAndUsable(t, w, `${c.point} recovered by ${by}`, i, by === 'sr_scan');
  }
}

export const vdiArgs = (w: World, name: string) => ({ vdi_uuid: w.uuid(name), vdi_location: w.uuid(name) });

/** What a create that may or may not have committed left: exactly nothing, or one VDI (image and record). */
export function createOutcome(w: World, b: Before, size: number, label: string, committed: boolean | 'either'): boolean {
  const a = added(w.ctx, b);
  const none = a.images.length === 0 && a.records.length === 0;
  const one = a.images.length === 1 && a.records.length === 1 && a.images[0] === a.records[0];
  if (committed !== true && none) return false;
  if (committed !== false && one) {
    w.models.set(a.images[0], new SparseDisk(size));
    w.names[a.images[0]] = label;
    return true;
  }
  throw new Error(`${label}: create neither rolled back nor kept (${committed}): ${JSON.stringify({ images: a.images, records: a.records })}`);
}

/** What a snapshot or clone of `of` that may or may not have committed left: nothing, or one new visible VDI reading as `of`. */
export function snapshotOutcome(w: World, b: Before, of: string, label: string, committed: boolean | 'either'): boolean {
  const a = added(w.ctx, b);
  if (committed !== true && a.images.length === 0 && a.records.length === 0) return false;
  const visible = a.records.filter((u) => a.meta.vdis[u].managed);
  if (committed !== false && visible.length === 1 && a.images.includes(visible[0])) {
    w.models.set(visible[0], w.models.get(w.uuid(of))!.copy());
    w.names[visible[0]] = label;
    return true;
  }
  throw new Error(`${label}: snapshot neither rolled back nor kept (${committed}): ${JSON.stringify({ images: a.images, records: a.records })}`);
}

/** A resize of `name` to `target` that may or may not have happened: the size is before or after; true if after. */
export async function resizeOutcome(w: World, name: string, target: number): Promise<boolean> {
  const model = w.models.get(w.uuid(name))!;
  const size = (await readTree(w.ctx)).get(w.uuid(name))!.virtualSize;
  if (size === target) {
    model.grow(size);
    return true;
  }
  if (size !== model.size) throw new Error(`resize of ${name} to ${target} left size ${size} (was ${model.size})`);
  return false;
}

export function createCase(point: string, committed: boolean): FaultCase {
  return {
    point,
    verb: 'vdi_create',
    extra: { args: createArgs(6 * MiB, `new at ${point}`), vdi_type: 'user' },
    async outcome(w, b) {
      createOutcome(w, b, 6 * MiB, `created-at-${point}`, committed);
    },
  };
}

export function snapshotCase(point: string, mode: 'double' | 'single' | 'clone', committed: boolean): FaultCase {
  return {
    point,
    verb: mode === 'clone' ? 'vdi_clone' : 'vdi_snapshot',
    extra: { vdi_uuid: '', ...(mode === 'single' ? { driver_params: { type: 'single' } } : {}) },
    async outcome(w, b) {
      snapshotOutcome(w, b, 'V', `${mode}-at-${point}`, committed);
    },
  };
}

/** Fills in the VDI a case works on (known only once the SR is set up). */
export function on(w: World, c: FaultCase, name = 'V'): FaultCase {
  return 'vdi_uuid' in c.extra ? { ...c, extra: { ...c.extra, ...vdiArgs(w, name) } } : c;
}
