// Reading an SR from the outside, with the VHD library only: its images and
// their trees, its metadata document, its data against the model, and the
// invariants every test checks after a change, a crash or a collection.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { checkChain, imageInfo, VhdChain, writeAt } from '../../lib/vhd/index.js';
import { BLOCK, type SparseDisk } from './model.js';
import { isServed, writeServed } from './nbd-vdi.js';
import { smVhd, type SmEnv } from './sm.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface Node {
  uuid: string;
  hidden: boolean;
  parent?: string;
  virtualSize: number;
  children: string[];
}

export const imagePath = (ctx: SmEnv, uuid: string) => path.join(ctx.location, `${uuid}.vhd`);

export function listImages(ctx: SmEnv): string[] {
  return fs
    .readdirSync(ctx.location)
    .filter((n) => n.endsWith('.vhd') && UUID.test(n.slice(0, -4)))
    .map((n) => n.slice(0, -4))
    .sort();
}

export async function readTree(ctx: SmEnv): Promise<Map<string, Node>> {
  const nodes = new Map<string, Node>();
  for (const uuid of listImages(ctx)) {
    const info = await imageInfo(imagePath(ctx, uuid));
    const parent = info.parentName === undefined ? undefined : /^([0-9a-f-]{36})\.vhd$/.exec(info.parentName)?.[1] ?? `?${info.parentName}`;
    nodes.set(uuid, { uuid, hidden: info.hidden, parent, virtualSize: info.virtualSize, children: [] });
  }
  for (const n of nodes.values()) if (n.parent) nodes.get(n.parent)?.children.push(n.uuid);
  return nodes;
}

export function depthOf(nodes: Map<string, Node>, uuid: string): number {
  let d = 0;
  for (let n = nodes.get(uuid); n; n = n.parent ? nodes.get(n.parent) : undefined) d++;
  return d;
}

/**
 * The forest as a canonical string: `name` for known uuids, `?` for others
 * (base copies get random uuids), `*` before hidden images, children in
 * parentheses; siblings and roots sorted.
 */
export function shapeOf(nodes: Map<string, Node>, names: Record<string, string>): string {
  const render = (n: Node): string => {
    const own = `${n.hidden ? '*' : ''}${names[n.uuid] ?? '?'}`;
    const kids = n.children.filter((c) => nodes.has(c)).map((c) => render(nodes.get(c)!)).sort();
    return kids.length ? `${own}(${kids.join(',')})` : own;
  };
  return [...nodes.values()]
    .filter((n) => !n.parent || !nodes.has(n.parent))
    .map(render)
    .sort()
    .join(' ');
}

export async function shape(ctx: SmEnv, names: Record<string, string>): Promise<string> {
  return shapeOf(await readTree(ctx), names);
}

export interface Metadata {
  uuid: string;
  name_label: string;
  vdis: Record<string, { uuid: string; managed: boolean; read_only: boolean; is_a_snapshot: boolean; snapshot_of: string; name_label: string; type?: string }>;
}

/**
 * The SR's metadata as one object: the SR record (`.sm/sr.json`) with every
 * VDI record (`.sm/vdi/<uuid>.json`), or a single-layout document
 * (`.sm/metadata.json`) while the SR has not been converted.
 */
export function readMetadata(ctx: SmEnv): Metadata {
  const dir = path.join(ctx.location, '.sm');
  if (!fs.existsSync(path.join(dir, 'sr.json'))) return JSON.parse(fs.readFileSync(path.join(dir, 'metadata.json'), 'utf8')) as Metadata;
  const sr = JSON.parse(fs.readFileSync(path.join(dir, 'sr.json'), 'utf8')) as Omit<Metadata, 'vdis'>;
  const vdis: Metadata['vdis'] = {};
  const names = fs.existsSync(path.join(dir, 'vdi')) ? fs.readdirSync(path.join(dir, 'vdi')) : [];
  for (const n of names.filter((x) => x.endsWith('.json')).sort()) vdis[n.slice(0, -5)] = JSON.parse(fs.readFileSync(path.join(dir, 'vdi', n), 'utf8'));
  return { ...sr, vdis };
}

/** Writes an SR's metadata in the single-document layout of earlier versions (what a conversion starts from). */
export function writeLegacyMetadata(ctx: SmEnv, meta: Metadata): void {
  const dir = path.join(ctx.location, '.sm');
  fs.rmSync(path.join(dir, 'vdi'), { recursive: true, force: true });
  fs.rmSync(path.join(dir, 'sr.json'), { force: true });
  fs.writeFileSync(path.join(dir, 'metadata.json'), JSON.stringify({ ...meta, version: 1 }, null, 1) + '\n');
}

export function journals(ctx: SmEnv): string[] {
  try {
    return fs.readdirSync(path.join(ctx.location, '.sm', 'journal'));
  } catch {
    return [];
  }
}

/** The pool-wide activation records in the SR (`.sm/active/<vdi>.json`): vdi -> record. */
export function activations(ctx: SmEnv): Map<string, { host: string; writable: boolean; since: string }> {
  const dir = path.join(ctx.location, '.sm', 'active');
  const names = fs.existsSync(dir) ? fs.readdirSync(dir).filter((n) => n.endsWith('.json')) : [];
  return new Map(names.map((n) => [n.slice(0, -5), JSON.parse(fs.readFileSync(path.join(dir, n), 'utf8'))]));
}

/**
 * Anything in the SR directory besides images and the metadata records (and
 * the journal, activation and trash folders, which must be empty).
 */
export function strayFiles(ctx: SmEnv): string[] {
  const out: string[] = [];
  for (const n of fs.readdirSync(ctx.location)) {
    if (n === '.sm') continue;
    if (n.endsWith('.vhd') && UUID.test(n.slice(0, -4))) continue;
    if (n.endsWith('.cbtlog') && UUID.test(n.slice(0, -7))) continue; // a VDI's changed-block log
    out.push(n);
  }
  for (const n of fs.readdirSync(path.join(ctx.location, '.sm'))) {
    if (n === 'sr.json' || n === 'vdi' || n === 'journal' || n === 'active' || n === 'trash') continue;
    out.push(`.sm/${n}`);
  }
  const trash = path.join(ctx.location, '.sm', 'trash');
  for (const f of fs.existsSync(trash) ? fs.readdirSync(trash) : []) out.push(`.sm/trash/${f}`);
  for (const j of journals(ctx)) out.push(`.sm/journal/${j}`);
  for (const a of fs.existsSync(path.join(ctx.location, '.sm', 'active')) ? fs.readdirSync(path.join(ctx.location, '.sm', 'active')) : []) out.push(`.sm/active/${a}`);
  return out;
}

/** Compares the chain of `uuid` with the model: every block any image of the chain holds, and every block the model holds. */
export async function diffVdi(ctx: SmEnv, uuid: string, model: SparseDisk): Promise<string | undefined> {
  const chain = await VhdChain.open(imagePath(ctx, uuid));
  try {
    if (chain.virtualSize !== model.size) return `${uuid}: virtual size ${chain.virtualSize}, model ${model.size}`;
    const blocks = new Set(model.blocks.keys());
    for (const image of chain.images) for (let i = 0; i < image.blockCount; i++) if (image.hasBlock(i)) blocks.add(i);
    const buf = Buffer.alloc(BLOCK);
    for (const i of [...blocks].sort((a, b) => a - b)) {
      const at = i * BLOCK;
      if (at >= model.size) continue;
      const part = buf.subarray(0, Math.min(BLOCK, model.size - at));
      await chain.read(part, at);
      if (!part.equals(model.read(at, part.length))) {
        const want = model.read(at, part.length);
        let k = 0;
        while (part[k] === want[k]) k++;
        return `${uuid}: differs from the model at byte ${at + k} (block ${i})`;
      }
    }
    return undefined;
  } finally {
    await chain.close();
  }
}

/**
 * `sm-vhd check -p` of every image, through the same library call, each image
 * checked once: its own structure, then that its parent exists and carries the
 * uuid its header names (what -p adds).
 */
export async function checkProblems(ctx: SmEnv): Promise<string[]> {
  const problems: string[] = [];
  const uuids = listImages(ctx);
  const infos = new Map(await Promise.all(uuids.map(async (u) => [u, await imageInfo(imagePath(ctx, u)).catch(() => undefined)] as const)));
  for (const uuid of uuids) {
    for (const r of await checkChain(imagePath(ctx, uuid))) {
      for (const p of r.problems) problems.push(`${path.basename(r.path)}: ${p}`);
    }
    const info = infos.get(uuid);
    if (info?.parentName === undefined) continue;
    const parent = [...infos.values()].find((i) => i && path.basename(i.path) === info.parentName);
    if (!parent) problems.push(`${uuid}.vhd: parent ${info.parentName} missing`);
    else if (parent.uuid !== info.parentUuid) problems.push(`${uuid}.vhd: parent uuid mismatch`);
  }
  return problems;
}

export interface ConsistencyOptions {
  /** Every image has a record (true after an sr_scan). */
  scanned?: boolean;
  /** Journals of an interrupted step may remain (after an abort or a crash, before recovery). */
  journalsAllowed?: boolean;
}

/**
 * The invariants after any operation: images pass check, no stray files or
 * journals, metadata agrees with the images, the visible VDIs are exactly the
 * model's and each reads as its model.
 */
export async function assertConsistent(
  t: ExecutionContext,
  ctx: SmEnv,
  models: Map<string, SparseDisk>,
  opts: ConsistencyOptions = {},
): Promise<Map<string, Node>> {
  const nodes = await readTree(ctx);
  t.deepEqual(await checkProblems(ctx), [], 'every image passes check');
  t.deepEqual(
    strayFiles(ctx).filter((f) => !(opts.journalsAllowed && f.startsWith('.sm/journal/'))),
    [],
    'no stray files or journals',
  );
  for (const n of nodes.values()) t.true(!n.parent || nodes.has(n.parent), `parent of ${n.uuid} exists`);
  const meta = readMetadata(ctx);
  for (const [uuid, rec] of Object.entries(meta.vdis)) {
    // A cbt_metadata VDI (its data destroyed) is its changed-block log alone.
    if (rec.type === 'cbt_metadata') t.true(!nodes.has(uuid) && fs.existsSync(path.join(ctx.location, `${uuid}.cbtlog`)), `cbt_metadata VDI ${uuid} has its log and no image`);
    else t.true(nodes.has(uuid), `record ${uuid} has an image`);
  }
  for (const n of nodes.values()) {
    const rec = meta.vdis[n.uuid];
    if (!n.hidden) t.true(rec?.managed === true, `visible image ${n.uuid} has a managed record`);
    else if (rec || opts.scanned) t.is(rec?.managed, false, `hidden image ${n.uuid} is an unmanaged base copy`);
  }
  const visible = [...nodes.values()].filter((n) => !n.hidden).map((n) => n.uuid).sort();
  t.deepEqual(visible, [...models.keys()].sort(), 'the visible images are exactly the VDIs of the model');
  for (const [uuid, model] of models) {
    if (!nodes.has(uuid)) continue;
    t.is(await diffVdi(ctx, uuid, model), undefined, `data of ${uuid}`);
  }
  return nodes;
}

/** A listing of a directory tree with a hash of every file, for "nothing changed" checks. */
export function snapshotDir(dir: string, exclude: (rel: string) => boolean = () => false): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (rel: string) => {
    const abs = path.join(dir, rel);
    const st = fs.lstatSync(abs);
    if (st.isSymbolicLink()) out[rel] = `link -> ${fs.readlinkSync(abs)}`;
    else if (st.isDirectory()) {
      out[rel || '.'] = `dir ${(st.mode & 0o7777).toString(8)}`;
      for (const n of fs.readdirSync(abs).sort()) {
        const r = rel ? `${rel}/${n}` : n;
        if (!exclude(r)) walk(r);
      }
    } else if (st.isFile()) out[rel] = `file ${st.size} ${(st.mode & 0o7777).toString(8)} ${createHash('sha256').update(fs.readFileSync(abs)).digest('hex')}`;
    else out[rel] = `other ${st.mode.toString(8)}`;
  };
  walk('');
  return out;
}

/**
 * Writes `data` at a virtual offset of a VDI: through its datapath (NBD, then a
 * flush) while it is served, as a guest writes; otherwise into its leaf with
 * `sm-vhd write` (cli) or the same library call in-process.
 */
export async function writeVdi(ctx: SmEnv, uuid: string, offset: number, data: Buffer, how: 'cli' | 'lib' = 'lib'): Promise<void> {
  if (isServed(ctx, uuid)) {
    await writeServed(ctx, uuid, offset, data);
    return;
  }
  if (how === 'lib') {
    await writeAt(imagePath(ctx, uuid), data, offset);
    return;
  }
  const file = ctx.scratch('data.bin');
  fs.writeFileSync(file, data);
  const r = await smVhd(['write', '-n', imagePath(ctx, uuid), '-i', file, '-o', String(offset)]);
  fs.rmSync(file, { force: true });
  if (r.code !== 0) throw new Error(`sm-vhd write failed (${r.code}): ${r.stderr}`);
}

/**
 * Files under SM_ROOT besides SMlog, the inventory, the SR's attach record and its sr-mount
 * link: e.g. a lock's holder file left by a killed process, VDI state files.
 */
export function hostLeftovers(ctx: SmEnv): string[] {
  const keep = new Set(['var/log/SMlog', 'etc/xensource-inventory', `run/sm/sr/${ctx.sr}.json`, `run/sr-mount/${ctx.sr}`]);
  const out: string[] = [];
  const walk = (rel: string) => {
    const abs = path.join(ctx.root, rel);
    const st = fs.lstatSync(abs);
    if (st.isDirectory()) for (const n of fs.readdirSync(abs)) walk(rel ? `${rel}/${n}` : n);
    else if (!keep.has(rel)) out.push(rel);
  };
  walk('');
  return out;
}

/**
 * Everything a host keeps: the whole test directory (SM_ROOT and the SR's parent
 * directory with the SR in it, plus canaries next to them), except SMlog (it
 * records the failures) and the lock directory (a lock's holder file comes and
 * goes; a lock for a new sr_uuid makes its directory).
 */
export function diskState(ctx: SmEnv): Record<string, string> {
  return snapshotDir(ctx.base, (rel) => rel === 'root/var/log/SMlog' || rel === 'root/var/lock' || rel.endsWith('.sock'));
}
