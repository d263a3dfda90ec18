// Serving active VDIs end to end: the FileSR driver (`--serve`) activates, real
// NBD clients (qemu-img, qemu-io, nbdinfo, a raw client) read and write through
// the datapath it started, and the images are checked with the VHD library
// after deactivation.
import fs from 'node:fs';
import test from 'ava';
import { MiB, pattern } from '../helpers/model.js';
import { isServed, libnbdUri, nbdSocket, openNbd, qemuIo, shortSocket } from '../helpers/nbd-vdi.js';
import { callDriver, datapathPids, gc, readSmlog, request, run, smCli, waitFor } from '../helpers/sm.js';
import { checkProblems, diffVdi, journals } from '../helpers/sr-state.js';
import { World, withWorld } from '../helpers/world.js';

const vdiArgs = (vdi: string, extra: Record<string, unknown> = {}) => ({ vdi_uuid: vdi, vdi_location: vdi, ...extra });

async function activate(w: World, vdi: string, writable = true): Promise<{ params: string; params_nbd: string }> {
  const a = (await w.s.call('vdi_attach', vdiArgs(vdi, { args: [String(writable)] }))) as { params: string; params_nbd: string };
  await w.s.call('vdi_activate', vdiArgs(vdi, { args: [String(writable)] }));
  return a;
}

async function deactivate(w: World, vdi: string): Promise<void> {
  await w.s.call('vdi_deactivate', vdiArgs(vdi));
  await w.s.call('vdi_detach', vdiArgs(vdi));
}

test('activate serves the VDI on its socket: qemu-img, qemu-io and nbdinfo through it; deactivate closes it cleanly', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 16 * MiB);
    await w.fill('V', 0, MiB); // before activation: straight into the image
    const a = await activate(w, V);
    t.is(a.params_nbd, `nbd:unix:${nbdSocket(ctx, V)}:exportname=${V}`, 'params_nbd in the established form');
    t.is(a.params_nbd.split(':').length, 4, 'no colon in the socket path');
    t.is(a.params, nbdSocket(ctx, V), 'no nbd module here: params is the socket');
    t.true(isServed(ctx, V));
    t.is(datapathPids(ctx.root).length, 1, 'one datapath process');

    const sock = shortSocket(ctx, V);
    const info = await run('qemu-img', ['info', '--output=json', `nbd:unix:${sock}:exportname=${V}`]);
    t.is(info.code, 0, info.stderr);
    t.is(JSON.parse(info.stdout)['virtual-size'], 16 * MiB);
    const io = await qemuIo(ctx, V, ['write -P 0xab 4M 1M', 'read -P 0xab 4M 1M', 'flush']);
    t.is(io.code, 0, io.stderr);
    t.notRegex(io.stdout + io.stderr, /fail|error|mismatch/i, io.stdout);
    w.models.get(V)!.write(4 * MiB, Buffer.alloc(MiB, 0xab));
    const map = await run('nbdinfo', ['--map', libnbdUri(sock, V)]);
    t.is(map.code, 0, map.stderr);
    t.regex(map.stdout, /^\s*0\s+\d+\s+0\s+data/m, 'the first MiB is data');
    t.regex(map.stdout, /hole,zero/, 'unwritten ranges are holes');

    const listed = await smCli(ctx, ['datapath']);
    t.is(listed.code, 0, listed.stderr);
    t.regex(listed.stdout, new RegExp(`${ctx.sr}\\s+${V}\\s+rw\\s+serving\\s+0\\s+${nbdSocket(ctx, V).replace(/[.]/g, '\\.')}`));
    t.regex(listed.stdout, /1 VDIs served/);
    fs.rmSync(sock);

    await deactivate(w, V);
    t.false(isServed(ctx, V), 'the link is gone');
    await waitFor('the datapath to exit', () => datapathPids(ctx.root).length === 0, 10_000);
    t.deepEqual(await checkProblems(ctx), [], 'the image passes check');
    t.is(await diffVdi(ctx, V, w.models.get(V)!), undefined, 'the image holds the bytes written through NBD');
    const log = readSmlog(ctx);
    t.regex(log, new RegExp(`datapath: VDI ${V} served read-write`));
    t.regex(log, new RegExp(`datapath: VDI ${V} no longer served`));
    t.regex(log, /datapath of SR .* exiting: nothing left to serve/);
    await w.check(t);
  });
});

test('a read-only activation refuses writes and leaves the data as it was', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 8 * MiB);
    await w.fill('V', 0, 2 * MiB);
    await activate(w, V, false);
    const io = await qemuIo(ctx, V, ['write -P 0x55 0 64k']);
    t.regex(io.stdout + io.stderr, /Permission denied|Operation not permitted/i, 'qemu-io cannot open it for writing');
    const c = await openNbd(ctx, V);
    await t.throwsAsync(c.write(0, Buffer.alloc(4096, 0x55)), { message: 'NBD error 1' }, 'a WRITE gets EPERM');
    t.true((await c.read(0, 2 * MiB)).equals(w.models.get(V)!.read(0, 2 * MiB)), 'reads see the data');
    c.close();
    await deactivate(w, V);
    await w.check(t);
  });
});

interface Acked {
  offset: number;
  data: Buffer;
}

test('20 snapshots and a clone of a VDI being written: each holds exactly the writes acknowledged before its pause; the writer sees no error', async (t) => {
  await withWorld(async (w, ctx) => {
    const SIZE = 8 * MiB;
    const V = await w.create('V', SIZE);
    await w.fill('V', 0, MiB);
    const base = w.models.get(V)!.copy();
    await activate(w, V);
    const c = await openNbd(ctx, V);
    const writes: Acked[] = [];
    let sent = 0;
    let acked = 0;
    let stop = false;
    let writerError: unknown;
    const writer = (async () => {
      try {
        for (let i = 0; !stop; i++) {
          const len = (1 + (i % 16)) * 4096;
          const offset = ((i * 7919 * 4096) % (SIZE - len)) & ~511;
          const data = pattern(1000 + i, len);
          writes.push({ offset, data });
          sent++;
          await c.write(offset, data);
          acked++;
        }
      } catch (err) {
        writerError = err;
      }
    })();
    const taken: Array<{ uuid: string; from: number; to: number }> = [];
    const pauses: number[] = [];
    // 20 snapshots (the requirement: a writer streaming while 20 snapshots are
    // taken) and one clone in the middle of them.
    const SNAPSHOTS = 20;
    const CLONE_AT = 10;
    for (let k = 0; k <= SNAPSHOTS; k++) {
      await waitFor('some writes', () => acked >= (k + 1) * 10 || writerError !== undefined, 30_000, 5);
      const from = acked; // acknowledged before the verb started: in the snapshot
      const before = readSmlog(ctx).length;
      const uuid = k === CLONE_AT ? await w.clone('V', `C${k}`) : await w.snapshot('V', `S${k}`);
      const to = sent; // sent after the verb returned: not in it
      taken.push({ uuid, from, to });
      const m = /datapath unpaused on .*; paused (\d+) ms/.exec(readSmlog(ctx).slice(before));
      if (m) pauses.push(Number(m[1]));
    }
    stop = true;
    await writer;
    t.is(writerError, undefined, 'the writer never saw an error');
    await c.flush();
    c.close();
    t.log(`${acked} writes; pauses (ms): ${pauses.join(', ')}`);
    t.is(pauses.length, SNAPSHOTS + 1, 'each pause logged with its duration');
    await deactivate(w, V);

    const modelAfter = (n: number) => {
      const m = base.copy();
      for (const { offset, data } of writes.slice(0, n)) m.write(offset, data);
      return m;
    };
    for (const { uuid, from, to } of taken) {
      let match: number | undefined;
      for (let n = from; n <= to && match === undefined; n++) if ((await diffVdi(ctx, uuid, modelAfter(n))) === undefined) match = n;
      t.not(match, undefined, `${uuid} equals the writes acknowledged before its pause (${from}..${to})`);
      w.models.set(uuid, modelAfter(match ?? from));
    }
    w.models.set(V, modelAfter(acked));
    await w.check(t);
  });
});

test('resize of a served VDI: paused, grown, unpaused; new connections see the new size', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 8 * MiB);
    await activate(w, V);
    const old = await openNbd(ctx, V);
    await old.write(0, Buffer.alloc(4096, 1));
    w.models.get(V)!.write(0, Buffer.alloc(4096, 1));
    await w.resize('V', 16 * MiB);
    const sock = shortSocket(ctx, V);
    const info = await run('qemu-img', ['info', '--output=json', `nbd:unix:${sock}:exportname=${V}`]);
    t.is(JSON.parse(info.stdout)['virtual-size'], 16 * MiB, 'a new connection sees the new size');
    await old.write(4096, Buffer.alloc(4096, 2)); // the old connection carries on within its size
    w.models.get(V)!.write(4096, Buffer.alloc(4096, 2));
    const io = await qemuIo(ctx, V, ['write -P 0x77 12M 64k']);
    t.is(io.code, 0, io.stderr);
    w.models.get(V)!.write(12 * MiB, Buffer.alloc(64 * 1024, 0x77));
    old.close();
    await deactivate(w, V);
    await w.check(t);
  });
});

test('the datapath killed: the next deactivate cleans up and succeeds; activate again serves the data flushed before', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 8 * MiB);
    await activate(w, V);
    const c = await openNbd(ctx, V);
    await c.write(MiB, pattern(5, MiB));
    await c.flush();
    w.models.get(V)!.write(MiB, pattern(5, MiB));
    await c.write(3 * MiB, pattern(6, 64 * 1024)); // not flushed: may or may not survive
    const [pid] = datapathPids(ctx.root);
    process.kill(pid, 'SIGKILL');
    await c.raw.closed;
    await w.s.call('vdi_deactivate', vdiArgs(V));
    t.regex(readSmlog(ctx), new RegExp(`VDI ${V}: its datapath had died; sockets removed, image repaired and closed`));
    t.false(isServed(ctx, V));
    t.deepEqual(await checkProblems(ctx), []);
    await w.s.call('vdi_activate', vdiArgs(V, { args: ['true'] }));
    const again = await openNbd(ctx, V);
    t.true((await again.read(MiB, MiB)).equals(pattern(5, MiB)), 'flushed data survived the kill');
    const tail = await again.read(3 * MiB, 64 * 1024);
    again.close();
    w.models.get(V)!.write(3 * MiB, tail); // whichever it is, it is whole (checked below against the image)
    t.true(tail.equals(pattern(6, 64 * 1024)) || tail.equals(Buffer.alloc(64 * 1024)), 'the unflushed write is all there or not at all');
    await deactivate(w, V);
    await w.check(t);
  });
});

test('a snapshot killed while the datapath is paused: the next verb on the VDI finds it paused and unpauses it on the right leaf', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 8 * MiB);
    await activate(w, V);
    const c = await openNbd(ctx, V);
    await c.write(0, pattern(9, MiB));
    w.models.get(V)!.write(0, pattern(9, MiB));
    const r = await callDriver('vdi_snapshot', request(ctx, 'vdi_snapshot', vdiArgs(V)), { ...ctx.env, SM_FAULT: 'snapshot-leaf-created' });
    t.is(r.signal, 'SIGKILL', 'the driver died at the fault point');
    t.regex((await smCli(ctx, ['datapath'])).stdout, new RegExp(`${V}\\s+rw\\s+paused`), 'left paused');
    t.true(journals(ctx).length > 0);
    // A client write is held meanwhile, and lands once the next verb unpaused.
    const held = c.write(2 * MiB, pattern(10, 4096));
    await w.s.call('vdi_activate', vdiArgs(V, { args: ['true'] })); // recovery rolls the snapshot back, then unpauses
    await held;
    w.models.get(V)!.write(2 * MiB, pattern(10, 4096));
    t.regex(readSmlog(ctx), new RegExp(`VDI ${V}: found paused by an interrupted verb; unpaused on`));
    t.true((await c.read(0, MiB)).equals(pattern(9, MiB)));
    c.close();
    await deactivate(w, V);
    await w.check(t);
  });
});

test('memory of the datapath with 1, 10 and 50 active VDIs', async (t) => {
  await withWorld(async (w, ctx) => {
    const vdis: string[] = [];
    for (let i = 0; i < 50; i++) vdis.push(await w.create(`V${i}`, 64 * MiB));
    const rssKiB = () => Number(/^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${datapathPids(ctx.root)[0]}/status`, 'utf8'))?.[1]);
    const figures: Record<number, number> = {};
    for (let i = 0; i < 50; i++) {
      await activate(w, vdis[i]);
      if (i === 0 || i === 9 || i === 49) {
        // A client per VDI touches its device once, as a guest would at boot.
        for (const v of vdis.slice(0, i + 1)) {
          const c = await openNbd(ctx, v);
          await c.write(0, Buffer.alloc(64 * 1024, 1));
          await c.read(0, 64 * 1024);
          c.close();
        }
        await new Promise((r) => setTimeout(r, 200));
        figures[i + 1] = rssKiB();
      }
    }
    const per = (figures[50] - figures[1]) / 49 / 1024;
    t.log(`datapath RSS: 1 VDI ${(figures[1] / 1024).toFixed(1)} MiB, 10 VDIs ${(figures[10] / 1024).toFixed(1)} MiB, 50 VDIs ${(figures[50] / 1024).toFixed(1)} MiB; ${per.toFixed(2)} MiB per additional VDI`);
    t.true(per <= 10, `at most 10 MiB per additional VDI (${per.toFixed(2)})`);
    for (const v of vdis) await deactivate(w, v);
    await waitFor('the datapath to exit', () => datapathPids(ctx.root).length === 0, 10_000);
    t.deepEqual(await checkProblems(ctx), []);
  });
});

test('the GC coalesces the chain under a VDI being written here: the datapath is paused for the relink and reopened on the new parent', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', 8 * MiB);
    await w.fill('V', 0, 2 * MiB);
    for (let i = 0; i < 2; i++) {
      await w.snapshot('V', `S${i}`);
      await w.fill('V', (2 + 2 * i) * MiB, MiB);
      await w.delete(`S${i}`);
    }
    await activate(w, V);
    const c = await openNbd(ctx, V);
    let stop = false;
    let writerError: unknown;
    let n = 0;
    const writer = (async () => {
      try {
        for (; !stop; n++) {
          const data = pattern(500 + n, 8192);
          await c.write((n * 8192) % (8 * MiB), data);
          w.models.get(V)!.write((n * 8192) % (8 * MiB), data);
        }
      } catch (err) {
        writerError = err;
      }
    })();
    await gc(ctx);
    stop = true;
    await writer;
    t.is(writerError, undefined, 'the writer saw no error');
    const log = readSmlog(ctx);
    t.regex(log, new RegExp(`SMGC: \\[\\d+\\] VDI ${V}: datapath paused for a relink`));
    t.regex(log, new RegExp(`SMGC: \\[\\d+\\] VDI ${V}: datapath unpaused on`));
    t.true((await c.read(0, 2 * MiB)).equals(w.models.get(V)!.read(0, 2 * MiB)), 'reads through the new chain');
    c.close();
    await deactivate(w, V);
    t.is(await w.shape(), 'V', 'the base copies coalesced, then V itself, still active, leaf-coalesced live: one image');
    await w.check(t);
  });
});
