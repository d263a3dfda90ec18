// An SR driven through a `--serve` driver, with the model kept in step: every
// create, write, snapshot, clone, resize and delete updates what each VDI must
// read as, and names the VDIs for tree shapes.
//
// With `xapi`, the stand-in xapi listens at the SR's XenAPI socket (xapi itself
// cannot run here), the calls carry the refs xapi would send, and after every
// verb (and every check) the stand-in's database must equal what xapi would
// hold for the SR as it is (xapi-expected.ts).
import type { ExecutionContext } from 'ava';
import { HOST_REF, SR_REF, startStandinFor } from '../xapi/standin-world.js';
import { bigPattern, pattern, SparseDisk } from './model.js';
import { createArgs, createAttachedSr, gc, makeSmEnv, startServer, type RunResult, type Server, type SmEnv } from './sm.js';
import { assertConsistent, shape, writeVdi, type ConsistencyOptions } from './sr-state.js';
import { XapiDbHistory } from './xapi-expected.js';
import type { XapiStandin } from './xapi-standin.js';

export interface WorldOptions {
  /** Run with the stand-in xapi, checking its database after each verb with this test's assertions. */
  xapi?: ExecutionContext;
}

interface VdiReply {
  uuid: string;
}

export class World {
  readonly models = new Map<string, SparseDisk>();
  readonly names: Record<string, string> = {};
  private seed = 1;
  /** With the stand-in: what the database must hold, beyond the SR's state. */
  private readonly history?: XapiDbHistory;

  private constructor(
    readonly ctx: SmEnv,
    readonly s: Server,
    readonly xapi?: XapiStandin,
    private readonly t?: ExecutionContext,
  ) {
    if (xapi) this.history = new XapiDbHistory(ctx, xapi, { srRef: SR_REF, hostRef: HOST_REF });
  }

  /** Starts a driver server and creates + attaches the SR (`create: false`: only attaches an existing one). */
  static async open(ctx: SmEnv, { create = true, xapi: t }: { create?: boolean } & WorldOptions = {}): Promise<World> {
    const xapi = t ? await startStandinFor(ctx) : undefined;
    const s = await startServer(ctx).catch(async (err: unknown) => {
      await xapi?.close();
      throw err;
    });
    try {
      if (create) await createAttachedSr(s);
      else await s.call('sr_attach');
    } catch (err) {
      await s.stop();
      await xapi?.close();
      throw err;
    }
    const w = new World(ctx, s, xapi, t);
    await w.history?.verbDone('sr_attach');
    await w.inStep(create ? 'sr_create, sr_attach' : 'sr_attach');
    return w;
  }

  /** The VDI fields of a call, with the ref xapi would send when it knows the VDI. */
  private vdiFields(uuid: string): Record<string, string> {
    const ref = this.history?.refOf(uuid);
    return { vdi_uuid: uuid, vdi_location: uuid, ...(ref ? { vdi_ref: ref } : {}) };
  }

  /** With the stand-in: its database must be what xapi would hold for the SR now. */
  async inStep(what: string): Promise<void> {
    if (this.history && this.t) await this.history.assert(this.t, what);
  }

  uuid(name: string): string {
    const u = Object.keys(this.names).find((k) => this.names[k] === name);
    if (!u) throw new Error(`no VDI named ${name}`);
    return u;
  }

  async create(name: string, size: number): Promise<string> {
    const { uuid: u } = (await this.s.call('vdi_create', { args: createArgs(size, name), vdi_type: 'user' })) as VdiReply;
    this.models.set(u, new SparseDisk(size));
    this.names[u] = name;
    await this.inStep(`vdi_create ${name}`);
    return u;
  }

  async write(name: string, offset: number, data: Buffer): Promise<void> {
    const u = this.uuid(name);
    await writeVdi(this.ctx, u, offset, data);
    this.models.get(u)!.write(offset, data);
    this.history?.wrote(u);
  }

  /** Writes `length` fresh bytes at `offset` (big writes use a cheaper pattern). */
  async fill(name: string, offset: number, length: number): Promise<void> {
    const seed = this.seed++;
    const step = 64 * 1024 * 1024;
    for (let at = 0; at < length; at += step) {
      const n = Math.min(step, length - at);
      await this.write(name, offset + at, length > 8 * 1024 * 1024 ? bigPattern(seed * 1000 + at / step, n) : pattern(seed, n));
    }
  }

  async snapshot(name: string, snapName: string, type?: 'single'): Promise<string> {
    const v = this.uuid(name);
    const { uuid: u } = (await this.s.call('vdi_snapshot', { ...this.vdiFields(v), ...(type ? { driver_params: { type } } : {}) })) as VdiReply;
    this.models.set(u, this.models.get(v)!.copy());
    this.names[u] = snapName;
    await this.history?.verbDone('vdi_snapshot', v);
    await this.inStep(`vdi_snapshot ${name} -> ${snapName}`);
    return u;
  }

  async clone(name: string, cloneName: string): Promise<string> {
    const v = this.uuid(name);
    const { uuid: u } = (await this.s.call('vdi_clone', this.vdiFields(v))) as VdiReply;
    this.models.set(u, this.models.get(v)!.copy());
    this.names[u] = cloneName;
    await this.history?.verbDone('vdi_clone', v);
    await this.inStep(`vdi_clone ${name} -> ${cloneName}`);
    return u;
  }

  async resize(name: string, size: number): Promise<void> {
    const u = this.uuid(name);
    await this.s.call('vdi_resize', { ...this.vdiFields(u), args: [String(size)] });
    this.models.get(u)!.grow(size);
    await this.history?.verbDone('vdi_resize', u);
    await this.inStep(`vdi_resize ${name}`);
  }

  async delete(name: string): Promise<void> {
    const u = this.uuid(name);
    await this.s.call('vdi_delete', this.vdiFields(u));
    this.models.delete(u);
    await this.history?.verbDone('vdi_delete', u);
    await this.inStep(`vdi_delete ${name}`);
  }

  /**
   * One foreground collection (`sm-gc -g`). The GC tells xapi what it removed
   * and every new `vhd-parent`, but not the sizes it changed: those xapi
   * hears at the next sr_scan.
   */
  async gc(): Promise<RunResult> {
    const r = await gc(this.ctx);
    this.history?.gcDone();
    await this.inStep('sm-gc -g');
    return r;
  }

  /** The VDI stops being one (hidden by hand, e.g. with sm-vhd set): the model forgets it. */
  forget(name: string): void {
    this.models.delete(this.uuid(name));
    this.history?.changed(this.uuid(name));
  }

  shape(): Promise<string> {
    return shape(this.ctx, this.names);
  }

  async check(t: ExecutionContext, opts?: ConsistencyOptions) {
    const nodes = await assertConsistent(t, this.ctx, this.models, opts);
    await this.inStep('check');
    return nodes;
  }

  async scan(): Promise<unknown> {
    const records = await this.s.call('sr_scan');
    await this.history?.verbDone('sr_scan');
    await this.inStep('sr_scan');
    return records;
  }

  async close(): Promise<void> {
    await this.s.stop();
    await this.xapi?.close();
  }
}

/**
 * Runs `fn` on a fresh SR of its own (a World in a new SM_ROOT), always closed
 * and removed afterwards; with `xapi`, against the stand-in xapi (see above).
 */
export async function withWorld(fn: (w: World, ctx: SmEnv) => Promise<void>, opts: WorldOptions = {}): Promise<void> {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx, opts);
  try {
    await fn(w, ctx);
  } finally {
    await w.close();
    await ctx.cleanup();
  }
}
