// vdi_delete decides from what it touches: a visible, writable VDI is a leaf on
// its own word (this SR never gives such an image a child), so it is removed
// even while some other image cannot be read and nothing says whose child that
// image is; everything else is still decided from the whole tree, where such
// an image may be anyone's child, so a read-only VDI is hidden, not removed.
import fs from 'node:fs';
import test from 'ava';
import { imageInfo } from '../../lib/vhd/index.js';
import { MiB } from '../helpers/model.js';
import { createArgs, gc } from '../helpers/sm.js';
import { imagePath, listImages } from '../helpers/sr-state.js';
import { withWorld } from '../helpers/world.js';

/** Zeroes the footer copy and header at the start and the footer at the end: nothing, its parent included, can be read of it. */
function makeOpaque(path: string): () => void {
  const fd = fs.openSync(path, 'r+');
  const size = fs.fstatSync(fd).size;
  const head = Buffer.alloc(1536);
  const tail = Buffer.alloc(512);
  fs.readSync(fd, head, 0, head.length, 0);
  fs.readSync(fd, tail, 0, tail.length, size - 512);
  fs.writeSync(fd, Buffer.alloc(head.length), 0, head.length, 0);
  fs.writeSync(fd, Buffer.alloc(tail.length), 0, tail.length, size - 512);
  fs.closeSync(fd);
  return () => {
    const back = fs.openSync(path, 'r+');
    fs.writeSync(back, head, 0, head.length, 0);
    fs.writeSync(back, tail, 0, tail.length, size - 512);
    fs.closeSync(back);
  };
}

test('while an image of unknown parent is unreadable, a writable VDI is removed, a read-only one hidden, a single snapshot with its child hidden', async (t) => {
  await withWorld(async (w, ctx) => {
    await w.create('V', 8 * MiB);
    await w.fill('V', 0, MiB);
    await w.snapshot('V', 'S'); // S: a writable leaf under V's base copy
    await w.create('W', 8 * MiB);
    await w.fill('W', 0, MiB);
    await w.snapshot('W', 'SW', 'single'); // SW: read-only, W its child
    const readOnly = ((await w.s.call('vdi_create', { args: [...createArgs(8 * MiB, 'R').slice(0, 7), 'true'], vdi_type: 'user' })) as { uuid: string }).uuid;
    await w.create('X', 8 * MiB);
    await w.fill('X', 0, MiB);
    const restore = makeOpaque(imagePath(ctx, w.uuid('X')));

    await w.delete('V');
    t.false(listImages(ctx).includes(w.uuid('V')), 'the writable VDI is removed: nothing can be its child');
    await w.delete('S');
    t.false(listImages(ctx).includes(w.uuid('S')), 'a writable snapshot leaf is removed');
    await w.s.call('vdi_delete', { vdi_uuid: readOnly, vdi_location: readOnly });
    t.true((await imageInfo(imagePath(ctx, readOnly))).hidden, 'a read-only VDI may be the unreadable image\'s parent: hidden, not removed');
    await w.delete('SW');
    t.true((await imageInfo(imagePath(ctx, w.uuid('SW')))).hidden, 'the single snapshot with a child is hidden');
    t.true(listImages(ctx).includes(w.uuid('X')), 'the unreadable image is left as it is');

    restore();
    await w.scan();
    t.is((await gc(ctx)).code, 0);
    t.false(listImages(ctx).includes(readOnly), 'once everything reads again, the GC collects the hidden leaf');
    await w.scan();
    await w.check(t, { scanned: true });
  });
});

test('a VDI whose record is damaged is decided from the tree: a leaf is removed, its record goes', async (t) => {
  await withWorld(async (w, ctx) => {
    await w.create('V', 8 * MiB);
    const v = w.uuid('V');
    fs.writeFileSync(`${ctx.location}/.sm/vdi/${v}.json`, '{ torn');
    await w.delete('V');
    t.false(listImages(ctx).includes(v));
    t.false(fs.existsSync(`${ctx.location}/.sm/vdi/${v}.json`));
  });
});

test('vdi_introduce of a visible image with a child records it read-only, so its delete hides it instead of orphaning the child', async (t) => {
  await withWorld(async (w, ctx) => {
    await w.create('W', 8 * MiB);
    await w.fill('W', 0, MiB);
    const sw = await w.snapshot('W', 'SW', 'single'); // SW: visible, W reads through it
    fs.rmSync(`${ctx.location}/.sm/vdi/${sw}.json`);
    await w.s.call('vdi_introduce', { vdi_uuid: sw, vdi_location: sw, vdi_type: 'user' });
    const record = JSON.parse(fs.readFileSync(`${ctx.location}/.sm/vdi/${sw}.json`, 'utf8')) as { read_only: boolean };
    t.true(record.read_only, 'recorded read-only: it has a child');
    await w.delete('SW');
    t.true((await imageInfo(imagePath(ctx, sw))).hidden, 'hidden, not removed');
    await w.check(t);
  });
});

// The other side of the fast path: a writable record must mean "no child", even
// of an image nobody can read. An image without a record introduced while some
// image of unknown parent is unreadable may be that image's parent, so it is
// recorded read-only until a scan reads every image.
const recordOf = (ctx: { location: string }, u: string) =>
  JSON.parse(fs.readFileSync(`${ctx.location}/.sm/vdi/${u}.json`, 'utf8')) as { read_only: boolean; children_unknown?: boolean };

test('sr_scan introduces a visible image read-only while its child cannot be read, so vdi_delete hides it and the child still reads after', async (t) => {
  await withWorld(async (w, ctx) => {
    await w.create('W', 8 * MiB);
    await w.fill('W', 0, MiB);
    const sw = await w.snapshot('W', 'SW', 'single'); // SW keeps the data, W is its child
    await w.fill('W', 2 * MiB, MiB);
    fs.rmSync(`${ctx.location}/.sm/vdi/${sw}.json`); // SW's record lost: the next scan introduces the image again
    const restore = makeOpaque(imagePath(ctx, w.uuid('W'))); // W unreadable: nothing says SW is its parent

    await w.scan();
    const record = recordOf(ctx, sw);
    t.true(record.read_only, 'introduced read-only: it may be the unreadable image`s parent');
    t.true(record.children_unknown);
    await w.delete('SW');
    t.true(listImages(ctx).includes(sw), 'the delete decided from the tree: not removed');
    t.true((await imageInfo(imagePath(ctx, sw))).hidden, 'hidden instead');

    restore();
    await w.scan();
    await w.check(t, { scanned: true }); // W reads as its model: its parent is still there
    t.is((await gc(ctx)).code, 0);
    await w.check(t, { scanned: true });
  });
});

test('a childless image introduced while another cannot be read is writable again once a scan reads every image', async (t) => {
  await withWorld(async (w, ctx) => {
    const v = await w.create('V', 8 * MiB);
    await w.fill('V', 0, MiB);
    await w.create('X', 8 * MiB);
    await w.fill('X', 0, MiB);
    fs.rmSync(`${ctx.location}/.sm/vdi/${v}.json`);
    const restore = makeOpaque(imagePath(ctx, w.uuid('X')));
    await w.scan();
    t.like(recordOf(ctx, v), { read_only: true, children_unknown: true });
    await w.scan();
    t.like(recordOf(ctx, v), { read_only: true, children_unknown: true }, 'still unknown while X cannot be read');
    restore();
    await w.scan();
    const after = recordOf(ctx, v);
    t.false(after.read_only, 'no child: writable again');
    t.is(after.children_unknown, undefined);
    await w.delete('V'); // the fast path again: removed
    t.false(listImages(ctx).includes(v));
    await w.check(t, { scanned: true });
  });
});

test('vdi_introduce while an image of unknown parent is unreadable: recorded read-only, and a rename to another uuid is refused', async (t) => {
  await withWorld(async (w, ctx) => {
    await w.create('W', 8 * MiB);
    await w.fill('W', 0, MiB);
    const sw = await w.snapshot('W', 'SW', 'single');
    fs.rmSync(`${ctx.location}/.sm/vdi/${sw}.json`);
    const restore = makeOpaque(imagePath(ctx, w.uuid('W')));
    const other = '0c0ffee0-0000-4000-8000-000000000001';
    const refused = await t.throwsAsync(w.s.call('vdi_introduce', { vdi_uuid: other, vdi_location: sw, new_uuid: other, vdi_type: 'user' }));
    t.regex(refused!.message, /may be a child of/);
    t.true(listImages(ctx).includes(sw), 'not renamed');
    await w.s.call('vdi_introduce', { vdi_uuid: sw, vdi_location: sw, vdi_type: 'user' });
    t.like(recordOf(ctx, sw), { read_only: true, children_unknown: true });
    restore();
    await w.scan();
    t.like(recordOf(ctx, sw), { read_only: true }, 'it has a child: read-only for good');
    t.is(recordOf(ctx, sw).children_unknown, undefined);
    await w.check(t, { scanned: true });
  });
});

test('vdi_update of an image without a record, while an image of unknown parent is unreadable, records it read-only as sr_scan would', async (t) => {
  await withWorld(async (w, ctx) => {
    const v = await w.create('V', 8 * MiB);
    await w.create('X', 8 * MiB);
    await w.fill('X', 0, MiB);
    fs.rmSync(`${ctx.location}/.sm/vdi/${v}.json`);
    const restore = makeOpaque(imagePath(ctx, w.uuid('X')));
    await w.s.call('vdi_update', { vdi_uuid: v, vdi_location: v });
    t.like(recordOf(ctx, v), { read_only: true, children_unknown: true });
    restore();
    await w.scan();
    t.like(recordOf(ctx, v), { read_only: false });
    await w.check(t, { scanned: true });
  });
});
