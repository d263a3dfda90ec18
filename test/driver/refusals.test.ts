// What must be refused before anything changes (each through the real driver):
// SR metadata that cannot be parsed or that a newer version wrote (sr_attach
// faults, the document stays byte for byte; `sm rebuild-metadata` makes a new
// one from the images and keeps the old), an SR directory attached under
// another uuid, snapshot/clone/resize of an image others read through (a
// hidden base copy, a `single` snapshot with its child), a resize below the
// current size, sr_delete of a directory holding foreign files; and what must
// work: a File SR location that is a symlink to a directory, `sm-gc -q` while
// the collector is stopped.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { MiB } from '../helpers/model.js';
import { createAttachedSr, createVdi, makeSmEnv, readSmlog, smCli, smGc, snapshot, SM_GC, waitFor, withServer, type Server, type SmEnv } from '../helpers/sm.js';
import { diskState, readMetadata, readTree, writeVdi } from '../helpers/sr-state.js';
import { World } from '../helpers/world.js';

const metadataFile = (ctx: SmEnv) => path.join(ctx.location, '.sm', 'sr.json');

async function withAttachedSr(fn: (s: Server, ctx: SmEnv) => Promise<void>): Promise<void> {
  const ctx = await makeSmEnv();
  try {
    await withServer(ctx, async (s) => {
      await createAttachedSr(s);
      await fn(s, ctx);
    });
  } finally {
    await ctx.cleanup();
  }
}

for (const [what, damage] of [
  ['damaged', (text: string) => text.slice(0, text.length / 2)],
  ['written by a newer version', (text: string) => JSON.stringify({ ...JSON.parse(text), version: 3, future_field: 'kept' })],
] as const) {
  test(`sr_attach refuses SR metadata ${what} and never rewrites it; sm rebuild-metadata rebuilds it from the images and keeps the old`, async (t) => {
    await withAttachedSr(async (s, ctx) => {
      const v = await createVdi(s, 8 * MiB, 'kept');
      await writeVdi(ctx, v, 0, Buffer.alloc(4096, 7));
      const snap = await snapshot(s, v);
      await s.call('sr_detach');
      const bad = damage(fs.readFileSync(metadataFile(ctx), 'utf8'));
      fs.writeFileSync(metadataFile(ctx), bad);
      const before = diskState(ctx);
      const fault = await s.fault('sr_attach');
      t.is(fault.code, 181, 'MetadataError');
      t.regex(fault.faultString, /rebuild-metadata/, 'the fault says how to recover');
      t.deepEqual(diskState(ctx), before, 'nothing changed, the metadata included');
      t.false(fs.existsSync(ctx.mount), 'the SR is not left attached');

      const r = await smCli(ctx, ['rebuild-metadata', ctx.sr, '--dir', ctx.location]);
      t.is(r.code, 0, r.stderr);
      const kept = /kept in (\S+)/.exec(r.stdout)?.[1];
      t.truthy(kept && fs.existsSync(kept), 'the old document is kept');
      t.is(fs.readFileSync(kept!, 'utf8'), bad, 'byte for byte');
      await s.call('sr_attach');
      const meta = readMetadata(ctx);
      const tree = await readTree(ctx);
      t.deepEqual(Object.keys(meta.vdis).sort(), [...tree.keys()].sort(), 'a record for every image');
      t.true(meta.vdis[v].managed && meta.vdis[snap].managed, 'the VDIs are VDIs again');
      const base = tree.get(v)!.parent!;
      t.false(meta.vdis[base].managed, 'the hidden base is a base copy');
      await s.call('vdi_snapshot', { vdi_uuid: v, vdi_location: v });
    });
  });
}

test('a damaged VDI record fails only the verbs on that VDI (MetadataError), is never written over, and sm rebuild-metadata records its image again', async (t) => {
  await withAttachedSr(async (s, ctx) => {
    const v = await createVdi(s, 8 * MiB, 'damaged');
    const other = await createVdi(s, 8 * MiB, 'fine');
    const file = path.join(ctx.location, '.sm', 'vdi', `${v}.json`);
    const torn = '{"uuid": "' + v.slice(0, 10);
    fs.writeFileSync(file, torn);
    const on = { vdi_uuid: v, vdi_location: v };
    for (const [verb, extra] of [['vdi_snapshot', on], ['vdi_clone', on], ['vdi_attach', { ...on, args: ['true'] }]] as const) {
      const fault = await s.fault(verb, extra);
      t.is(fault.code, 181, `${verb}: ${fault.faultString}`);
      t.regex(fault.faultString, new RegExp(`record of VDI ${v}`));
    }
    await s.call('vdi_snapshot', { vdi_uuid: other, vdi_location: other });
    await s.call('sr_scan');
    t.is(fs.readFileSync(file, 'utf8'), torn, 'never written over, a scan included');
    await s.call('sr_detach');
    const r = await smCli(ctx, ['rebuild-metadata', ctx.sr, '--dir', ctx.location]);
    t.is(r.code, 0, r.stderr);
    await s.call('sr_attach');
    const meta = readMetadata(ctx);
    t.true(meta.vdis[v]!.managed, 'the image is a VDI again');
    t.is(meta.vdis[other]!.name_label, 'fine', 'the records that parse are kept');
    await s.call('vdi_snapshot', on);
  });
});

test('an SR directory attaches only under its own uuid', async (t) => {
  await withAttachedSr(async (s, ctx) => {
    await s.call('sr_detach');
    const other = { ...ctx, sr: '6a1d1e6c-8f7e-4a53-9c53-0d6d2c4f0b11' };
    const before = diskState(ctx);
    const fault = await withServer(other, (o) => o.fault('sr_attach'));
    t.is(fault.code, 47);
    t.regex(fault.faultString, new RegExp(`holds SR ${ctx.sr}`));
    t.deepEqual(diskState(ctx), before, 'nothing changed');
    await s.call('sr_attach');
  });
});

test('snapshot, clone and resize refuse an image others read through, with the established codes, changing nothing', async (t) => {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx);
  try {
    await w.create('V', 8 * MiB);
    await w.fill('V', 0, MiB);
    await w.snapshot('V', 'S');
    const base = (await readTree(ctx)).get(w.uuid('V'))!.parent!;
    await w.create('W', 8 * MiB);
    await w.fill('W', 0, MiB);
    await w.snapshot('W', 'SW', 'single');
    const before = diskState(ctx);
    const on = (u: string) => ({ vdi_uuid: u, vdi_location: u });
    const cases: [string, string, Record<string, unknown>, number][] = [
      ['snapshot of a hidden base', 'vdi_snapshot', on(base), 81],
      ['clone of a hidden base', 'vdi_clone', on(base), 81],
      ['resize of a hidden base', 'vdi_resize', { ...on(base), args: [String(16 * MiB)] }, 46],
      ['clone of a single snapshot with a child', 'vdi_clone', on(w.uuid('SW')), 81],
      ['snapshot of a single snapshot with a child', 'vdi_snapshot', on(w.uuid('SW')), 81],
      ['resize of a single snapshot with a child', 'vdi_resize', { ...on(w.uuid('SW')), args: [String(16 * MiB)] }, 46],
      ['resize of a VDI to 1 byte (a shrink)', 'vdi_resize', { ...on(w.uuid('V')), args: ['1'] }, 79],
    ];
    for (const [what, verb, extra, code] of cases) {
      const fault = await w.s.fault(verb, extra);
      t.is(fault.code, code, `${what}: ${fault.faultString}`);
    }
    t.deepEqual(diskState(ctx), before, 'nothing changed');
    await w.check(t);
  } finally {
    await w.close();
    await ctx.cleanup();
  }
});

test('sr_delete of a directory holding a foreign file refuses (SRNotEmpty) before detaching or removing anything', async (t) => {
  await withAttachedSr(async (s, ctx) => {
    fs.writeFileSync(path.join(ctx.location, 'notes.txt'), 'operator notes\n');
    const before = diskState(ctx);
    const fault = await s.fault('sr_delete');
    t.is(fault.code, 39);
    t.regex(fault.faultString, /notes\.txt/);
    t.deepEqual(diskState(ctx), before, 'still attached, .sm intact');
    fs.rmSync(path.join(ctx.location, 'notes.txt'));
    await s.call('sr_delete');
    t.false(fs.existsSync(ctx.location));
  });
});

test('a File SR location that is a symlink to a directory is created, attached and deleted through it', async (t) => {
  const ctx = await makeSmEnv();
  const real = path.join(ctx.base, 'real-dir');
  fs.mkdirSync(real);
  fs.symlinkSync(real, ctx.location);
  try {
    await withServer(ctx, async (s) => {
      await createAttachedSr(s);
      const v = await createVdi(s, 4 * MiB);
      t.true(fs.existsSync(path.join(real, `${v}.vhd`)), 'the image lives in the directory the link points at');
      await s.call('sr_detach');
      await s.call('sr_attach');
      await s.call('vdi_delete', { vdi_uuid: v, vdi_location: v });
      await s.call('sr_delete');
    });
  } finally {
    await ctx.cleanup();
  }
});

test('sm-gc -q says a collector runs while it is stopped (SIGSTOP)', async (t) => {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx);
  try {
    // A leaf-coalesce of a few MiB, slowed down so the collector is caught mid-run.
    // Written after the snapshot, so the leaf holds the 16 MiB the leaf-coalesce copies (at 2 MiB/s).
    await w.create('V', 64 * MiB);
    await w.snapshot('V', 'S');
    await w.fill('V', 0, 16 * MiB);
    await w.delete('S');
    const gcProc = spawn(process.execPath, [SM_GC, '-u', ctx.sr, '-g'], { env: { ...ctx.env, SM_GC_MAX_MIBPS: '2' }, stdio: 'ignore' });
    await waitFor('the copy', () => (readSmlog(ctx).includes('Leaf-coalescing') ? true : undefined), 30_000);
    gcProc.kill('SIGSTOP');
    try {
      const q = await smGc(ctx, ['-q']);
      t.is(q.stdout, 'Currently running: True\n');
    } finally {
      gcProc.kill('SIGKILL');
      await new Promise((r) => gcProc.once('exit', r));
    }
    t.is((await smGc(ctx, ['-q'])).stdout, 'Currently running: False\n');
  } finally {
    await w.close();
    await ctx.cleanup();
  }
});
