// An SR driven through a `--serve` driver, with the model kept in step: every
// create, write, snapshot, clone, resize and delete updates what each VDI must
// read as, and names the VDIs for tree shapes.
import type { ExecutionContext } from 'ava';
import { bigPattern, pattern, SparseDisk } from './model.js';
import { clone, createAttachedSr, createVdi, deleteVdi, makeSmEnv, snapshot, startServer, type Server, type SmEnv } from './sm.js';
import { assertConsistent, shape, writeVdi, type ConsistencyOptions } from './sr-state.js';

export class World {
  readonly models = new Map<string, SparseDisk>();
  readonly names: Record<string, string> = {};
  private seed = 1;

  private constructor(
    readonly ctx: SmEnv,
    readonly s: Server,
  ) {}

  /** Starts a driver server and creates + attaches the SR (`create: false`: only attaches an existing one). */
  static async open(ctx: SmEnv, { create = true } = {}): Promise<World> {
    const s = await startServer(ctx);
    try {
      if (create) await createAttachedSr(s);
      else await s.call('sr_attach');
    } catch (err) {
      await s.stop();
      throw err;
    }
    return new World(ctx, s);
  }

  uuid(name: string): string {
    const u = Object.keys(this.names).find((k) => this.names[k] === name);
    if (!u) throw new Error(`no VDI named ${name}`);
    return u;
  }

  async create(name: string, size: number): Promise<string> {
    const u = await createVdi(this.s, size, name);
    this.models.set(u, new SparseDisk(size));
    this.names[u] = name;
    return u;
  }

  async write(name: string, offset: number, data: Buffer): Promise<void> {
    const u = this.uuid(name);
    await writeVdi(this.ctx, u, offset, data);
    this.models.get(u)!.write(offset, data);
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
    const u = await snapshot(this.s, this.uuid(name), type);
    this.models.set(u, this.models.get(this.uuid(name))!.copy());
    this.names[u] = snapName;
    return u;
  }

  async clone(name: string, cloneName: string): Promise<string> {
    const u = await clone(this.s, this.uuid(name));
    this.models.set(u, this.models.get(this.uuid(name))!.copy());
    this.names[u] = cloneName;
    return u;
  }

  async resize(name: string, size: number): Promise<void> {
    const u = this.uuid(name);
    await this.s.call('vdi_resize', { vdi_uuid: u, vdi_location: u, args: [String(size)] });
    this.models.get(u)!.grow(size);
  }

  async delete(name: string): Promise<void> {
    const u = this.uuid(name);
    await deleteVdi(this.s, u);
    this.models.delete(u);
  }

  /** The VDI stops being one (hidden by hand, e.g. with sm-vhd set): the model forgets it. */
  forget(name: string): void {
    this.models.delete(this.uuid(name));
  }

  shape(): Promise<string> {
    return shape(this.ctx, this.names);
  }

  check(t: ExecutionContext, opts?: ConsistencyOptions) {
    return assertConsistent(t, this.ctx, this.models, opts);
  }

  scan(): Promise<unknown> {
    return this.s.call('sr_scan');
  }

  close(): Promise<void> {
    return this.s.stop();
  }
}

/** Runs `fn` on a fresh SR of its own (a World in a new SM_ROOT), always closed and removed afterwards. */
export async function withWorld(fn: (w: World, ctx: SmEnv) => Promise<void>): Promise<void> {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx);
  try {
    await fn(w, ctx);
  } finally {
    await w.close();
    await ctx.cleanup();
  }
}
