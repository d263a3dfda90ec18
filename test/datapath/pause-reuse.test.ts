// A pause keeps the chain open: a snapshot of a VDI being written settles the
// leaf (flushed, BAT and batmap written) without closing it, the verb renames
// it into the new leaf's parent, and the unpause opens only the new leaf and
// takes the rest over. These tests show that the image taken over is never
// written again (its bytes stay the same while clients keep writing), that
// what the verb wrote into it (its hidden flag) stays, and that a datapath
// killed at the pause's and the unpause's new fault points loses nothing
// acknowledged before the pause.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import test from 'ava';
import { readImageSummary, VhdChain } from '../../lib/vhd/index.js';
import { MiB, pattern, SparseDisk } from '../helpers/model.js';
import { openNbd, type NbdVdiClient } from '../helpers/nbd-vdi.js';
import { callDriver, gc, readSmlog, request, smVhd, type SmEnv } from '../helpers/sm.js';
import { checkProblems, imagePath, journals, listImages, readMetadata } from '../helpers/sr-state.js';
import { withWorld, type World } from '../helpers/world.js';

const SIZE = 8 * MiB;
const vdiArgs = (vdi: string, extra: Record<string, unknown> = {}) => ({ vdi_uuid: vdi, vdi_location: vdi, ...extra });
const sha = (file: string) => createHash('sha256').update(fs.readFileSync(file)).digest('hex');

interface Sent {
  offset: number;
  data: Buffer;
  /** Event numbers (one counter for sends, acknowledgements and verb calls): orders them without a clock. */
  sentAt: number;
  ackedAt?: number;
}

/**
 * Clients writing 4 KiB at changing offsets over the whole disk (new blocks
 * too), each one request at a time; every write is logged with when it was
 * sent and acknowledged, and kept in the model once acknowledged.
 */
function startWriters(w: World, vdi: string, clients: NbdVdiClient[]) {
  let stop = false;
  let acked = 0;
  let error: unknown;
  let events = 0;
  const sent: Sent[] = [];
  const runs = clients.map(async (c, k) => {
    try {
      for (let i = 0; !stop; i++) {
        const offset = (((i * 7919 + k * 104_729) * 4096) % SIZE) & ~4095;
        const x: Sent = { offset, data: pattern(k * 1_000_000 + i + 1, 4096), sentAt: events++ };
        sent.push(x);
        await c.write(offset, x.data);
        x.ackedAt = events++;
        w.models.get(vdi)!.write(offset, x.data);
        acked++;
      }
    } catch (err) {
      error = err;
    }
  });
  return {
    sent,
    now: () => events++,
    get acked() {
      return acked;
    },
    get error() {
      return error;
    },
    async stop() {
      stop = true;
      await Promise.all(runs);
    },
  };
}

/**
 * The first 4 KiB piece of `image` that no moment of a pause in [from, to]
 * explains: each piece holds the write to it acknowledged last before `from`
 * (or what it held before the writers started), or a write sent before `to`
 * and not acknowledged before `from` (in flight at the pause, drained into it).
 */
function unexplained(image: Buffer, initial: Buffer, sent: readonly Sent[], from: number, to: number): string | undefined {
  for (let o = 0; o < image.length; o += 4096) {
    const piece = image.subarray(o, o + 4096);
    const here = sent.filter((x) => x.offset === o);
    const before = here.filter((x) => x.ackedAt !== undefined && x.ackedAt < from);
    // A write acknowledged before `from` may be what the piece holds unless another was sent after it was acknowledged and acknowledged before `from` too.
    const settled = before.filter((x) => !before.some((y) => y.sentAt > x.ackedAt!));
    const candidates = [...settled, ...here.filter((x) => x.sentAt < to && !(x.ackedAt !== undefined && x.ackedAt < from))].map((x) => x.data);
    if (settled.length === 0) candidates.push(initial.subarray(o, o + 4096));
    if (!candidates.some((c) => c.equals(piece))) return `bytes ${o}+4096 hold none of the ${candidates.length} values a pause in the call could leave`;
  }
  return undefined;
}

const waitAcked = async (writers: { acked: number; error: unknown }, n: number) => {
  const deadline = Date.now() + 30_000;
  while (writers.acked < n && writers.error === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
};

async function readVdi(ctx: SmEnv, uuid: string): Promise<Buffer> {
  const chain = await VhdChain.open(imagePath(ctx, uuid));
  try {
    const buf = Buffer.alloc(chain.virtualSize);
    await chain.read(buf, 0);
    return buf;
  } finally {
    await chain.close();
  }
}

test('a snapshot under writers keeps the old leaf open as the new parent: it is never written again, keeps the hidden flag the verb set, and every image checks clean', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', SIZE);
    await w.fill('V', 0, MiB);
    await w.s.call('vdi_attach', vdiArgs(V, { args: ['true'] }));
    await w.s.call('vdi_activate', vdiArgs(V, { args: ['true'] }));
    const initial = w.models.get(V)!.read(0, SIZE);
    const clients = await Promise.all([openNbd(ctx, V), openNbd(ctx, V), openNbd(ctx, V)]);
    const writers = startWriters(w, V, clients);
    const frozen = new Map<string, string>(); // image -> sha256 once it stopped being the leaf
    const calls: Array<{ uuid: string; from: number; to: number }> = [];
    for (let k = 0; k < 3; k++) {
      await waitAcked(writers, (k + 1) * 150);
      const before = readSmlog(ctx).length;
      const from = writers.now();
      const uuid = await w.snapshot('V', `S${k}`);
      calls.push({ uuid, from, to: writers.now() });
      const log = readSmlog(ctx).slice(before);
      const m = /datapath: VDI \S+ unpaused on .* ms paused \((\d+) of (\d+) images opened in \d+ ms, the rest kept open\)/.exec(log);
      t.truthy(m, `snapshot ${k}: the unpause says what it opened: ${log}`);
      t.is(m && Number(m[1]), 1, `snapshot ${k}: only the new leaf is opened`);
      t.is(m && Number(m[2]), k + 2, `snapshot ${k}: the chain is ${k + 2} deep, the old leaf among the images kept`);
      for (const u of listImages(ctx)) if (u !== V && !frozen.has(u)) frozen.set(u, sha(imagePath(ctx, u)));
    }
    // Writes go on into the leaf (new blocks allocated, footer moved): nothing reaches the images below it.
    await waitAcked(writers, writers.acked + 300);
    const later = writers.acked;
    await waitAcked(writers, later + 300);
    await writers.stop();
    t.is(writers.error, undefined, 'no client saw an error');
    for (const c of clients) await c.flush();
    for (const [u, digest] of frozen) t.is(sha(imagePath(ctx, u)), digest, `${u} unchanged while the leaf was written`);
    const hidden = [...frozen.keys()].filter((u) => !readMetadata(ctx).vdis[u] || !readMetadata(ctx).vdis[u].managed);
    t.is(hidden.length, 3, 'three base copies (the leaf of before each snapshot)');
    for (const u of hidden) t.true((await readImageSummary(imagePath(ctx, u))).hidden, `${u}: the hidden flag the snapshot set stayed (no stale footer written over it)`);
    for (const c of clients) c.close();
    await w.s.call('vdi_deactivate', vdiArgs(V));
    await w.s.call('vdi_detach', vdiArgs(V));
    for (const u of listImages(ctx)) {
      const r = await smVhd(['check', '-n', imagePath(ctx, u)]);
      t.is(r.code, 0, `sm-vhd check ${u}: ${r.stdout}${r.stderr}`);
    }
    t.deepEqual(await checkProblems(ctx), []);
    // Each snapshot holds the disk as it was at one instant of its call; V holds every acknowledged write.
    for (const { uuid, from, to } of calls) {
      const content = await readVdi(ctx, uuid);
      t.is(unexplained(content, initial, writers.sent, from, to), undefined, `snapshot ${uuid}`);
      const model = new SparseDisk(SIZE);
      model.write(0, content);
      w.models.set(uuid, model);
    }
    await w.check(t);
  });
});

test('a relink under a served VDI: the parent written by the coalesce is opened again, the rest kept; the datapath reads the coalesced data through the same connection', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', SIZE);
    // Three layers with data of their own: B0 (0-2 MiB), B1 (2-4 MiB, coalesced into B0), V (5-6 MiB).
    await w.fill('V', 0, 2 * MiB);
    await w.snapshot('V', 'S0');
    await w.fill('V', 2 * MiB, 2 * MiB);
    await w.snapshot('V', 'S1');
    await w.fill('V', 5 * MiB, MiB);
    await w.delete('S0');
    await w.delete('S1');
    // Read-only: the GC then relinks V but leaves its leaf alone (a live leaf-coalesce would reopen everything after).
    await w.s.call('vdi_attach', vdiArgs(V, { args: ['false'] }));
    await w.s.call('vdi_activate', vdiArgs(V, { args: ['false'] }));
    const c = await openNbd(ctx, V);
    t.true((await c.read(0, SIZE)).equals(w.models.get(V)!.read(0, SIZE)), 'reads as the model before the GC');
    const before = readSmlog(ctx).length;
    await gc(ctx);
    const log = readSmlog(ctx).slice(before);
    t.regex(log, new RegExp(`VDI ${V}: datapath paused for a relink \\(.*held: drained in \\d+ ms, settled in \\d+ ms, synced only what the file lacked\\)`));
    // The new header is made durable with the readers running, and before the image they read through before goes.
    const synced = log.indexOf('Relinked headers synced in');
    t.true(synced > log.indexOf(`VDI ${V}: datapath unpaused`) && synced < log.indexOf('Deleted coalesced image'), log);
    t.true((await c.read(0, SIZE)).equals(w.models.get(V)!.read(0, SIZE)), 'the same connection reads the coalesced data after the GC');
    // The relink's unpause: V's leaf opened, and B0 (the parent coalesced into) opened again rather than kept.
    const relinked = /datapath: VDI \S+ unpaused on .* ms paused \((\d+) of (\d+) images opened in \d+ ms, the rest kept open\)/.exec(log);
    t.truthy(relinked, log);
    t.deepEqual(relinked && [Number(relinked[1]), Number(relinked[2])], [2, 2], 'leaf and coalesced parent opened, nothing stale kept');
    c.close();
    await w.s.call('vdi_deactivate', vdiArgs(V));
    await w.s.call('vdi_detach', vdiArgs(V));
    await w.check(t);
  });
});

/**
 * Activated through a driver whose environment names a fault point (the
 * datapath it starts inherits it); one write flushed, one only acknowledged.
 */
async function servedWithFault(w: World, fault: string) {
  const ctx = w.ctx;
  const V = await w.create('V', SIZE);
  await w.fill('V', 0, MiB);
  await w.s.call('vdi_attach', vdiArgs(V, { args: ['true'] }));
  const act = await callDriver('vdi_activate', request(ctx, 'vdi_activate', vdiArgs(V, { args: ['true'] })), { ...ctx.env, SM_FAULT: fault });
  if (act.code !== 0) throw new Error(`activate: ${act.stderr}`);
  const c = await openNbd(ctx, V);
  await c.write(2 * MiB, pattern(71, 64 * 1024));
  await c.flush();
  await c.write(5 * MiB, pattern(72, 64 * 1024)); // acknowledged, not flushed by the client: the pause flushes it
  w.models.get(V)!.write(2 * MiB, pattern(71, 64 * 1024));
  w.models.get(V)!.write(5 * MiB, pattern(72, 64 * 1024));
  return { V, c };
}

/** After the datapath died: deactivate cleans up, activate serves it again, and it reads as the model. */
async function recoverAndRead(t: import('ava').ExecutionContext, w: World, V: string, c: NbdVdiClient): Promise<void> {
  const ctx = w.ctx;
  await c.raw.closed;
  c.close();
  await w.s.call('vdi_deactivate', vdiArgs(V));
  t.regex(readSmlog(ctx), new RegExp(`VDI ${V}: its datapath had died`));
  await w.s.call('vdi_activate', vdiArgs(V, { args: ['true'] }));
  const again = await openNbd(ctx, V);
  t.true((await again.read(2 * MiB, 64 * 1024)).equals(pattern(71, 64 * 1024)), 'the flushed write is there');
  t.true((await again.read(5 * MiB, 64 * 1024)).equals(pattern(72, 64 * 1024)), 'the write acknowledged before the pause is there (the pause flushed it)');
  again.close();
  await w.s.call('vdi_deactivate', vdiArgs(V));
  await w.s.call('vdi_detach', vdiArgs(V));
  t.deepEqual(journals(ctx), []);
  await w.check(t);
}

test('the datapath killed once the pause drained and flushed: the snapshot fails with nothing changed, every acknowledged write is in the image', async (t) => {
  await withWorld(async (w, ctx) => {
    const { V, c } = await servedWithFault(w, 'datapath-pause-drained');
    const images = listImages(ctx).sort();
    await t.throwsAsync(() => w.s.call('vdi_snapshot', vdiArgs(V)), { message: /could not pause/ });
    t.deepEqual(listImages(ctx).sort(), images, 'no image made');
    await recoverAndRead(t, w, V, c);
  });
});

test('the datapath killed in the unpause, after switching to the new chain: the snapshot is kept, it and the VDI hold every write acknowledged before the pause', async (t) => {
  await withWorld(async (w, ctx) => {
    const { V, c } = await servedWithFault(w, 'datapath-unpause-refreshed');
    const before = Object.keys(readMetadata(ctx).vdis);
    await t.throwsAsync(() => w.s.call('vdi_snapshot', vdiArgs(V)));
    const snap = Object.values(readMetadata(ctx).vdis).find((v) => !before.includes(v.uuid) && v.is_a_snapshot && v.snapshot_of === V);
    t.truthy(snap, 'the snapshot was committed before the unpause');
    w.models.set(snap!.uuid, w.models.get(V)!.copy());
    w.names[snap!.uuid] = 'S';
    await recoverAndRead(t, w, V, c);
  });
});
