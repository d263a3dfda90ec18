// Never acting on a partial view. A varied SR (a hidden base with a snapshot
// and a hidden middle image, a `single` snapshot with its live child, a
// leaf-coalesce candidate, hidden garbage in a tree of its own) has each image
// in turn made unreadable for the moment, three ways: a torn primary footer,
// a truncated end (both leave the footer copy and header at the start, so the
// image's parent is still known), and the start and end both unreadable
// (nothing is known, as after EIO; a root process is not refused by file
// permissions, so EACCES is stood in for by this). While it is unreadable:
// sr_scan, `sm tree`, `sm-gc -g`, a snapshot, a clone of the single snapshot,
// a resize, two deletes and the GC again. Then the image reads again, the GC runs once more,
// and every VDI must read exactly as its model, every image pass check, nothing
// referenced be gone; and the tree the GC was free to collect was collected.
import fs from 'node:fs';
import test, { type ExecutionContext } from 'ava';
import { MiB } from '../helpers/model.js';
import { gc, makeSmEnv, smCli, SmFault, type SmEnv } from '../helpers/sm.js';
import { imagePath, listImages, readTree } from '../helpers/sr-state.js';
import { World } from '../helpers/world.js';

type Damage = 'torn' | 'truncated' | 'opaque';

/** Makes the image unreadable; returns what puts it back byte for byte. */
function damage(path: string, how: Damage): () => void {
  const size = fs.statSync(path).size;
  const fd = fs.openSync(path, 'r+');
  try {
    const read = (at: number, n: number) => {
      const b = Buffer.alloc(n);
      fs.readSync(fd, b, 0, n, at);
      return b;
    };
    if (how === 'torn') {
      const tail = read(size - 512, 512);
      fs.writeSync(fd, Buffer.alloc(512, 0x5a), 0, 512, size - 512);
      return () => rewrite(path, [[tail, size - 512]]);
    }
    if (how === 'truncated') {
      const tail = read(size - 4096, 4096);
      fs.ftruncateSync(fd, size - 4096);
      return () => rewrite(path, [[tail, size - 4096]]);
    }
    const head = read(0, 1024);
    const tail = read(size - 512, 512);
    fs.writeSync(fd, Buffer.alloc(1024), 0, 1024, 0);
    fs.writeSync(fd, Buffer.alloc(512), 0, 512, size - 512);
    return () => rewrite(path, [[head, 0], [tail, size - 512]]);
  } finally {
    fs.closeSync(fd);
  }
}

function rewrite(path: string, parts: [Buffer, number][]): void {
  const fd = fs.openSync(path, 'r+');
  try {
    for (const [b, at] of parts) fs.writeSync(fd, b, 0, b.length, at);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * B1*{S1, H*{V}}: V snapshotted (S1), snapshotted again (T) and T deleted;
 * SW{W}: a single snapshot of W; BX*{X}: X's snapshot deleted;
 * BG*: garbage, a tree of its own. Returns the image of each name.
 */
async function variedSr(w: World): Promise<Record<string, string>> {
  await w.create('V', 16 * MiB);
  await w.fill('V', 0, 3 * MiB);
  await w.snapshot('V', 'S1');
  await w.fill('V', 5 * MiB + 512, 2 * MiB);
  await w.snapshot('V', 'T');
  await w.fill('V', 9 * MiB + 4096, MiB);
  await w.delete('T');
  await w.create('W', 8 * MiB);
  await w.fill('W', 0, 2 * MiB);
  await w.snapshot('W', 'SW', 'single');
  await w.fill('W', MiB, 2 * MiB);
  await w.create('X', 8 * MiB);
  await w.fill('X', 0, 2 * MiB);
  await w.snapshot('X', 'XS');
  await w.fill('X', 4 * MiB, MiB);
  await w.delete('XS');
  await w.create('G', 4 * MiB);
  await w.fill('G', 0, MiB);
  await w.snapshot('G', 'GS');
  await w.delete('GS');
  await w.delete('G');
  const nodes = await readTree(w.ctx);
  const parentOf = (u: string) => nodes.get(u)!.parent!;
  const images: Record<string, string> = { V: w.uuid('V'), S1: w.uuid('S1'), W: w.uuid('W'), SW: w.uuid('SW'), X: w.uuid('X') };
  images.H = parentOf(images.V);
  images.B1 = parentOf(images.H);
  images.BX = parentOf(images.X);
  const garbage = [...nodes.values()].filter((n) => n.hidden && n.children.length === 0 && !n.parent);
  if (garbage.length !== 1) throw new Error(`expected one garbage image, found ${garbage.length}`);
  images.BG = garbage[0].uuid;
  return images;
}

/** A call that may fault only with one of `allowed` codes (the VDI's own image unreadable); any other fault fails the test. */
async function attempt(t: ExecutionContext, what: string, allowed: number[], fn: () => Promise<unknown>): Promise<boolean> {
  try {
    await fn();
    return true;
  } catch (err) {
    if (!(err instanceof SmFault)) throw err;
    t.true(allowed.includes(err.code), `${what}: fault ${err.code} (${err.message}) is not one of ${allowed.join(', ') || 'none'}`);
    return false;
  }
}

async function oneCase(t: ExecutionContext, how: Damage, target: string): Promise<void> {
  const ctx: SmEnv = await makeSmEnv();
  const w = await World.open(ctx);
  try {
    const img = await variedSr(w);
    const damaged = img[target];
    const label = `${target} ${how}`;
    const restore = damage(imagePath(ctx, damaged), how);

    await w.scan();
    const tree = await smCli(ctx, ['tree', ctx.sr]);
    t.is(tree.code, 0, `${label}: sm tree`);
    t.regex(tree.stdout, new RegExp(`${damaged.slice(0, 8)}\\[VHD\\]\\(\\?//\\?\\|n\\) UNREADABLE`), `${label}: sm tree shows the image in its place`);
    t.is((await gc(ctx)).code, 0, `${label}: the GC runs`);
    // The garbage is a tree of its own: collected unless nothing says where the unreadable image belongs.
    const garbageLeft = listImages(ctx).includes(img.BG);
    if (target === 'BG') t.true(garbageLeft, `${label}: the unreadable garbage image is left alone`);
    else t.is(garbageLeft, how === 'opaque', `${label}: the rest of the SR is collected (garbage ${garbageLeft ? 'kept' : 'deleted'})`);

    const own = (names: string[]) => names.includes(target);
    // Only a call on the unreadable image's own VDI (or chain) may fail, and then with its own codes.
    const snapped = await attempt(t, `${label}: snapshot V`, own(['V', 'H', 'B1']) ? [82, 109] : [], () => w.snapshot('V', 'S3'));
    t.false(snapped && target === 'V', `${label}: a snapshot of an unreadable image is refused`);
    t.false(await attempt(t, `${label}: clone SW`, [81], () => w.clone('SW', 'CW')), `${label}: a single snapshot with a child is never cloned`);
    await attempt(t, `${label}: resize X`, own(['X']) ? [110, 46] : [], () => w.resize('X', 10 * MiB));
    if (snapped) await attempt(t, `${label}: delete S3`, [], () => w.delete('S3'));
    // SW has a child: hidden, or refused (46) when it cannot be hidden now.
    const swDeleted = await attempt(t, `${label}: delete SW`, own(['SW']) ? [46] : [], () => w.delete('SW'));
    t.false(swDeleted && target === 'SW', `${label}: an unreadable image with a child is never deleted`);
    t.is((await gc(ctx)).code, 0, `${label}: the GC runs again`);
    t.true(listImages(ctx).includes(damaged), `${label}: the unreadable image is still there`);

    restore();
    await w.scan();
    t.is((await gc(ctx)).code, 0, `${label}: the GC runs once it reads again`);
    await w.scan();
    await w.check(t, { scanned: true });
  } finally {
    await w.close();
    await ctx.cleanup();
  }
}

const TARGETS = ['B1', 'S1', 'H', 'V', 'SW', 'W', 'BX', 'X', 'BG'];

for (const how of ['torn', 'truncated', 'opaque'] as const) {
  test(`every image of a varied tree ${how}, in turn: verbs and the GC act on nothing that might depend on it`, async (t) => {
    t.timeout(240_000);
    for (const target of TARGETS) await oneCase(t, how, target);
  });
}
