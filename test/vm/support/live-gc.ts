/**
 * The live GC on a real SR in the guest: a VDI stays active (served by
 * sm-datapath, written through its NBD socket by clients) while snapshots are
 * taken and deleted and `sm-gc -g` coalesces under it, on the NFS and the
 * LVM paths (the host tests, test/gc/live-gc.test.ts, run on a File SR).
 * Written once for every SR type: each test file gives its own way to call a
 * verb, to run the GC and to reach the SR's images.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { uuidOfImageName } from '../../../lib/sr/repository.js';
import { VhdImage } from '../../../lib/vhd/index.js';
import { liveLines, waitWrites, writeLoad } from '../../helpers/live-load.js';
import { bigPattern, MiB, SparseDisk } from '../../helpers/model.js';
import { writeServed, type NbdVdiClient } from '../../helpers/nbd-vdi.js';
import { node, SM_VHD } from '../../helpers/sm.js';

export interface LiveSr {
  sr: string;
  smRoot: string;
  /** Calls `verb` on the SR as a toolstack does; a fault fails the test; returns the result. */
  ok(verb: string, extra: Record<string, unknown>): Promise<unknown>;
  /** `sm-gc -u <sr> -g`; fails the test unless it exits 0. */
  gc(): Promise<void>;
  /** Runs `fn` with the path of every image of the SR, each readable (LVM: inactive LVs activated for it, and deactivated after). */
  withImages<T>(fn: (paths: Map<string, string>) => Promise<T>): Promise<T>;
  /** The SR's own size rule for every image, if it has one (LVM: visible images inflated, hidden ones deflated). */
  assertSpace?(what: string): Promise<void>;
}

interface ImageFacts {
  parent: string | undefined;
  hidden: boolean;
}

const vdiArgs = (vdi: string, args: string[] = []) => ({ vdi_uuid: vdi, vdi_location: vdi, args });
const createArgs = (size: number, label: string) => [String(size), label, '', '', 'false', '', '', 'false'];
const short = (u: string) => u.slice(0, 8);

/** The images the SR holds before a scenario: other tests' VDIs, left out of its tree. */
const imagesNow = async (t: LiveSr) => new Set(await t.withImages(async (paths) => [...paths.keys()]));

/**
 * The tree of the images made since `others` were there, as the images tell
 * it, after `sm-vhd check` passed on every one. (Called with the writers
 * stopped and flushed: the served leaf is still open.)
 */
async function checkedTree(t: LiveSr, others: Set<string>, what: string): Promise<Map<string, ImageFacts>> {
  return t.withImages(async (paths) => {
    const tree = new Map<string, ImageFacts>();
    for (const [u, path] of paths) {
      if (others.has(u)) continue;
      const c = await node(SM_VHD, ['check', '-n', path], { timeoutMs: 120_000 });
      assert.equal(c.code, 0, `${what}: sm-vhd check of ${short(u)}: ${c.stdout}${c.stderr}`);
      const image = await VhdImage.open(path);
      try {
        const parent = image.isDifferencing ? uuidOfImageName(image.header.parentUnicodeName) : undefined;
        tree.set(u, { parent, hidden: image.footer.hidden === 1 });
      } finally {
        await image.close();
      }
    }
    return tree;
  });
}

/** The bytes of an image's chain (an inactive VDI), read with `sm-vhd export`. */
async function exported(t: LiveSr, vdi: string): Promise<Buffer> {
  const dir = await mkdtemp(join(t.smRoot, 'export-'));
  try {
    return await t.withImages(async (paths) => {
      const raw = join(dir, 'raw');
      const r = await node(SM_VHD, ['export', '-n', paths.get(vdi)!, '-o', raw], { timeoutMs: 120_000 });
      assert.equal(r.code, 0, `sm-vhd export ${short(vdi)}: ${r.stderr}`);
      return readFile(raw);
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** An active VDI of `size` written through its socket, `prefill` bytes at 0 first. */
async function activeVdi(t: LiveSr, models: Map<string, SparseDisk>, size: number, prefill: number, label: string): Promise<string> {
  const vdi = ((await t.ok('vdi_create', { args: createArgs(size, label) })) as { uuid: string }).uuid;
  await t.ok('vdi_attach', vdiArgs(vdi, ['true']));
  await t.ok('vdi_activate', vdiArgs(vdi, ['true']));
  const model = new SparseDisk(size);
  const data = bigPattern(size + prefill, prefill);
  await writeServed(place(t), vdi, 0, data);
  model.write(0, data);
  models.set(vdi, model);
  return vdi;
}

const place = (t: LiveSr) => ({ root: t.smRoot, base: t.smRoot, sr: t.sr });

async function release(t: LiveSr, vdi: string): Promise<void> {
  await t.ok('vdi_deactivate', vdiArgs(vdi));
  await t.ok('vdi_detach', vdiArgs(vdi));
  await t.ok('vdi_delete', vdiArgs(vdi));
}

/** `sm-gc -g` while the writers write: none of them saw an error, and they kept writing during it. */
async function gcUnderLoad(t: LiveSr, models: Map<string, SparseDisk>, vdi: string, size: number): Promise<{ conn: NbdVdiClient; close(): void }> {
  const load = await writeLoad({ ctx: place(t), models }, vdi, size, 2);
  await waitWrites(load, 30);
  const before = load.writes;
  await t.gc();
  const during = load.writes - before;
  await waitWrites(load, 10);
  await load.stop();
  assert.deepEqual(load.errors, [], 'no client saw an I/O error');
  assert.ok(during > 0, `the clients kept writing during the GC (${during} writes)`);
  const conn = load.conns[0]!;
  await conn.flush();
  return { conn, close: () => load.close() };
}

async function readsAsModel(conn: NbdVdiClient, model: SparseDisk, what: string): Promise<void> {
  for (let at = 0; at < model.size; at += 8 * MiB) {
    const n = Math.min(8 * MiB, model.size - at);
    assert.ok((await conn.read(at, n)).equals(model.read(at, n)), `${what}: bytes ${at}..${at + n} read as every acknowledged write`);
  }
}

const smlog = (t: LiveSr) => readFile(join(t.smRoot, 'var', 'log', 'SMlog'), 'utf8');

/** SMlog lines of this VDI's live work (the test's output). */
async function logLive(t: LiveSr, vdi: string, what: string): Promise<void> {
  const lines = liveLines(await smlog(t))
    .split('\n')
    .filter((l) => l.includes(short(vdi)));
  process.stdout.write(`live-gc ${what}:\n${lines.join('\n')}\n`);
}

/**
 * The seed scenario, live: vdi_create, attach, activate, written through NBD,
 * one snapshot, more writes, the snapshot deleted, `sm-gc -g` while clients
 * write: the VDI ends as one image without being deactivated, reads as every
 * acknowledged write through a connection opened before the GC, and every
 * image passes check. The VDI is deleted at the end.
 */
export async function seedScenarioLive(t: LiveSr, size = 64 * MiB): Promise<void> {
  const models = new Map<string, SparseDisk>();
  const others = await imagesNow(t);
  const V = await activeVdi(t, models, size, 16 * MiB, 'live seed');
  const load = await writeLoad({ ctx: place(t), models }, V, size, 2);
  await waitWrites(load, 30);
  const S = ((await t.ok('vdi_snapshot', vdiArgs(V))) as { uuid: string }).uuid;
  await waitWrites(load, 30);
  await t.ok('vdi_delete', vdiArgs(S));
  await load.stop();
  assert.deepEqual(load.errors, [], 'no client saw an I/O error during the snapshot');
  load.close();
  const { conn, close } = await gcUnderLoad(t, models, V, size);
  try {
    await logLive(t, V, 'seed');
    const log = await smlog(t);
    assert.match(log, new RegExp(`Live leaf-coalesce of ${short(V)}: final step \\([\\d.]+ MiB in \\d+ blocks\\) and swap took \\d+ ms paused`));
    assert.doesNotMatch(log, new RegExp(`Live leaf-coalesce of ${short(V)} given up`));
    const tree = await checkedTree(t, others, 'after the live leaf-coalesce');
    assert.deepEqual([...tree.keys()], [V], `the VDI is one image, the snapshot and the base copy gone (images: ${[...tree.keys()].map(short).join(', ')})`);
    assert.deepEqual(tree.get(V), { parent: undefined, hidden: false }, 'depth 1: no parent, visible');
    await t.assertSpace?.('after the live leaf-coalesce');
    // Still served, never deactivated: a connection opened before the GC reads what the model says.
    await readsAsModel(conn, models.get(V)!, 'after the live leaf-coalesce');
  } finally {
    close();
  }
  await release(t, V);
}

/**
 * A hidden node under an active leaf: V active, snapshots A and B, A deleted,
 * so V's base copy (B's parent too) is the only child of the older base copy.
 * `sm-gc -g` while clients write V coalesces it and relinks V (paused) and B
 * onto the older one; then B deleted, the next `sm-gc -g` leaf-coalesces V
 * live. No client error, bytes exact, images checked. V is deleted at the end.
 */
export async function relinkUnderActiveLeaf(t: LiveSr, size = 64 * MiB): Promise<void> {
  const models = new Map<string, SparseDisk>();
  const others = await imagesNow(t);
  const V = await activeVdi(t, models, size, 8 * MiB, 'live relink');
  const snapshot = async () => ((await t.ok('vdi_snapshot', vdiArgs(V))) as { uuid: string }).uuid;
  let load = await writeLoad({ ctx: place(t), models }, V, size, 2);
  await waitWrites(load, 30);
  const A = await snapshot();
  await waitWrites(load, 30);
  await load.stop();
  load.close();
  assert.deepEqual(load.errors, [], 'no client saw an I/O error during snapshot A');
  // B holds what V held when it was taken: the writers stand still meanwhile.
  const B = await snapshot();
  models.set(B, models.get(V)!.copy());
  await t.ok('vdi_delete', vdiArgs(A));
  load = await writeLoad({ ctx: place(t), models }, V, size, 2);
  await waitWrites(load, 30);
  await load.stop();
  load.close();

  const shaped = await checkedTree(t, others, 'before the GC');
  const upper = shaped.get(V)!.parent!;
  const lower = shaped.get(upper)?.parent;
  assert.ok(lower && shaped.get(upper)!.hidden && shaped.get(lower)!.hidden, 'V and B read through two base copies, the upper one the only child of the lower');
  assert.equal(shaped.get(B)!.parent, upper);

  let gcRun = await gcUnderLoad(t, models, V, size);
  try {
    await logLive(t, V, 'relink');
    assert.match(await smlog(t), new RegExp(`SMGC: \\[\\d+\\] VDI ${V}: datapath paused for a relink`), 'V was paused for the relink');
    const tree = await checkedTree(t, others, 'after the relink');
    assert.deepEqual([...tree.keys()].sort(), [V, B, lower].sort(), 'the upper base copy was coalesced into the lower one and removed');
    assert.deepEqual(tree.get(V), { parent: lower, hidden: false }, 'V relinked onto the lower base copy');
    assert.deepEqual(tree.get(B), { parent: lower, hidden: false }, 'B relinked onto the lower base copy');
    await t.assertSpace?.('after the relink');
    await readsAsModel(gcRun.conn, models.get(V)!, 'V after the relink');
    assert.ok((await exported(t, B)).equals(models.get(B)!.raw()), 'B reads as when it was taken');
  } finally {
    gcRun.close();
  }

  // B gone, V is its base copy's only child: leaf-coalesced live, through the relinked chain.
  await t.ok('vdi_delete', vdiArgs(B));
  models.delete(B);
  gcRun = await gcUnderLoad(t, models, V, size);
  try {
    const tree = await checkedTree(t, others, 'after the live leaf-coalesce of the relinked VDI');
    assert.deepEqual([...tree.keys()], [V], 'one image left');
    assert.deepEqual(tree.get(V), { parent: undefined, hidden: false });
    await t.assertSpace?.('after the live leaf-coalesce of the relinked VDI');
    await readsAsModel(gcRun.conn, models.get(V)!, 'V after the live leaf-coalesce');
  } finally {
    gcRun.close();
  }
  await release(t, V);
}
