// Wrappers (pause, read-only, passthrough) and the server's lifecycle: call order
// through stacked wrappers, pause with writes in flight from a real client,
// refresh, close draining, destroy aborting, use after close.
import { spawn } from 'node:child_process';
import test from 'ava';
import {
  FileDevice,
  hideOperations,
  MemoryDevice,
  NbdServer,
  NbdServerClosedError,
  operationsOf,
  PassthroughDevice,
  PausableDevice,
  ReadOnlyDevice,
} from '../../lib/nbd/index.js';
import { CMD, KiB, MiB, nbdUri, pattern, RawClient, readAll, RecordingDevice, SlowDevice, sleep, withServer } from './helpers.js';

test('call order through stacked wrappers, and FUA / WRITE_ZEROES emulation reaching the bottom device', async (t) => {
  const trace: string[] = [];
  const memory = new MemoryDevice(64 * MiB);
  hideOperations(memory, ['zero']); // the server must write zeroes itself
  const stack = new RecordingDevice(new PausableDevice(new RecordingDevice(memory, 'inner', trace)), 'outer', trace);
  t.deepEqual(operationsOf(stack), ['write', 'flush', 'trim', 'extents']);
  await stack.write(Buffer.alloc(512, 1), 0);
  t.deepEqual(trace.splice(0), ['outer>write:512', 'inner>write:512', 'inner<write:512', 'outer<write:512']);

  await withServer({}, async (s) => {
    s.server.addExport('d', stack);
    const c = await RawClient.open(s.socket, 'd');
    c.request(CMD.WRITE, 4096, 512, { flags: 1, payload: Buffer.alloc(512, 2) }); // FUA
    t.is((await c.simpleReply())?.error, 0);
    t.deepEqual(trace.splice(0), [
      'outer>write:512', 'inner>write:512', 'inner<write:512', 'outer<write:512',
      'outer>flush', 'inner>flush', 'inner<flush', 'outer<flush',
    ]);
    // 40 MiB of zeroes (more than the payload limit): written in bounded chunks, never one big buffer.
    await memory.write(Buffer.alloc(MiB, 0x33), 8 * MiB);
    c.request(CMD.WRITE_ZEROES, 0, 40 * MiB);
    t.is((await c.simpleReply())?.error, 0);
    const writes = trace.filter((l) => l.startsWith('inner>write:'));
    t.is(writes.length, 40);
    t.true(writes.every((l) => l === 'inner>write:1048576'));
    t.true((await readAll(memory, 0, 40 * MiB)).equals(Buffer.alloc(40 * MiB)));
    c.destroy();
  });
});

test('pause with writes in flight from qemu-io: held requests wait, refresh swaps the device, unpause completes them without error', async (t) => {
  const first = new MemoryDevice(4 * MiB);
  const pausable = new PausableDevice(new SlowDevice(first, 40));
  await withServer({}, async (s) => {
    s.server.addExport('d', pausable);
    const args = ['-f', 'raw'];
    for (let i = 0; i < 16; i++) args.push('-c', `write -P 0x${(0x10 + i).toString(16)} ${i * 64}k 64k`);
    for (let i = 0; i < 16; i++) args.push('-c', `read -P 0x${(0x10 + i).toString(16)} ${i * 64}k 64k`);
    args.push(nbdUri(s.socket, 'd'));
    const child = spawn('qemu-io', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));

    // Wait until writes are flowing, then pause while one is inside the slow device.
    while (first.calls.write < 3) await sleep(5);
    const flushesBefore = first.calls.flush;
    await pausable.pause();
    t.true(pausable.paused);
    t.is(first.calls.flush, flushesBefore + 1, 'pause flushed the inner device');
    const writesAtPause = first.calls.write;
    await sleep(300); // several slow-write periods: nothing may get through
    t.is(first.calls.write, writesAtPause, 'held requests did not reach the device');
    t.throws(() => pausable.refresh(new MemoryDevice(8 * MiB)), { message: /size/ });
    const ro = new ReadOnlyDevice(new MemoryDevice(4 * MiB));
    t.throws(() => pausable.refresh(ro), { message: /operations/ });

    // Refresh onto a copy, as a datapath does after the image changed underneath.
    const second = new MemoryDevice(4 * MiB);
    await second.write(await readAll(first), 0);
    const old = pausable.refresh(new SlowDevice(second, 1));
    t.true(old instanceof SlowDevice);
    pausable.unpause();
    t.false(pausable.paused);
    t.is(await exited, 0, output);
    t.notRegex(output, /error|failed/i);
    t.is(first.calls.write, writesAtPause, 'nothing went to the old device after refresh');
    const bytes = await readAll(second);
    for (let i = 0; i < 16; i++) t.true(bytes.subarray(i * 64 * KiB, (i + 1) * 64 * KiB).equals(Buffer.alloc(64 * KiB, 0x10 + i)), `block ${i}`);
  });
  t.throws(() => new PausableDevice(new MemoryDevice(MiB)).refresh(new MemoryDevice(MiB)), { message: /paused/ });
});

test('pause() waits for the in-flight request to drain before it resolves', async (t) => {
  const memory = new MemoryDevice(MiB);
  // A write that stays inside the device until the test lets it go.
  let letGo!: () => void;
  const released = new Promise<void>((resolve) => (letGo = resolve));
  class GatedDevice extends PassthroughDevice {
    override async write(data: Buffer, offset: number) {
      if (offset === 0) await released;
      return super.write(data, offset);
    }
  }
  const pausable = new PausableDevice(new GatedDevice(memory));
  const write = pausable.write(Buffer.alloc(512, 9), 0);
  await sleep(5);
  let paused = false;
  const pausing = pausable.pause().then(() => (paused = true));
  const held = pausable.write(Buffer.alloc(512, 8), 512);
  await sleep(50);
  t.false(paused, 'pause resolved while a write was still in the device');
  t.is(memory.calls.flush, 0);
  letGo();
  await write;
  await pausing;
  t.is(memory.calls.write, 1, 'the held write did not run');
  t.is(memory.calls.flush, 1);
  pausable.unpause();
  await held;
  t.is(memory.calls.write, 2);
});

test('close() drains: in-flight requests are answered, then the connection closes; later use is refused', async (t) => {
  const memory = new MemoryDevice(MiB);
  await memory.write(pattern(MiB, 3), 0);
  await withServer({}, async (s) => {
    s.server.addExport('d', new SlowDevice(memory, 200, true));
    const c = await RawClient.open(s.socket, 'd');
    c.request(CMD.READ, 0, 4096, { cookie: 5n });
    await sleep(30);
    const closing = s.server.close();
    t.true(s.server.closed);
    const r = await c.simpleReply(4096);
    t.is(r?.error, 0);
    t.true(r?.data?.equals(pattern(MiB, 3).subarray(0, 4096)));
    await c.closed;
    await closing;
    await t.throwsAsync(s.server.listen(`${s.dir}/again.sock`), { instanceOf: NbdServerClosedError });
    t.throws(() => s.server.addExport('x', memory), { instanceOf: NbdServerClosedError });
    const { Socket } = await import('node:net');
    t.throws(() => s.server.handleSocket(new Socket()), { instanceOf: NbdServerClosedError });
    t.true(s.log.lines.some((l) => /server closed/.test(l)));
  });
});

test('destroy() aborts connections at once; factory devices are closed when their connection ends', async (t) => {
  const made: MemoryDevice[] = [];
  const server = new NbdServer();
  const { mkdtemp, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const dir = await mkdtemp(`${tmpdir()}/nbd-destroy-`);
  try {
    server.addExport('f', () => {
      const d = new MemoryDevice(MiB);
      made.push(d);
      return new SlowDevice(d, 1000, true);
    });
    await server.listen(`${dir}/s.sock`);
    const c = await RawClient.open(`${dir}/s.sock`, 'f');
    c.request(CMD.READ, 0, 512);
    await sleep(30);
    const destroying = server.destroy();
    await c.closed;
    t.is(made[0].calls.read, 0, 'the socket went before the slow read reached the device');
    t.false(made[0].closed, 'not closed under a running request');
    await destroying;
    t.is(made[0].calls.read, 1);
    t.is(made.length, 1);
    t.true(made[0].closed, 'factory device closed after its last request settled');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('exports can be added and removed while serving; handleSocket serves an accepted stream', async (t) => {
  await withServer({}, async (s) => {
    s.server.addExport('a', new MemoryDevice(MiB));
    const c = await RawClient.open(s.socket, 'a');
    s.server.removeExport('a');
    t.is((await c.read_(0, 512)).length, 512, 'a connection already on the export carries on');
    c.destroy();
    const d = await RawClient.connect(s.socket);
    await d.greet();
    t.deepEqual(await d.go('a'), { error: 0x80000006 });
    d.destroy();
    s.server.addExport('b', new MemoryDevice(2 * MiB));
    const { createServer, connect } = await import('node:net');
    const other = createServer((sock) => s.server.handleSocket(sock));
    await new Promise<void>((r) => other.listen(`${s.dir}/other.sock`, r));
    const e = await RawClient.open(`${s.dir}/other.sock`, 'b');
    t.is((await e.read_(MiB, 512)).length, 512);
    e.destroy();
    await new Promise((r) => other.close(r));
    void connect;
  });
});

test('MemoryDevice extents and zero; FileDevice round trip; PassthroughDevice hides what its inner lacks', async (t) => {
  const m = new MemoryDevice(MiB, { chunkSize: 4096 });
  await m.write(Buffer.alloc(8192, 1), 4096);
  t.deepEqual(await m.extents(0, 16384), [
    { length: 4096, hole: true, zero: true },
    { length: 8192, hole: false, zero: false },
    { length: 4096, hole: true, zero: true },
  ]);
  await m.zero(4096, 4096, { mayTrim: true });
  t.is(m.allocatedBytes, 4096);
  await m.zero(0, 100, { mayTrim: false });
  t.is(m.allocatedBytes, 8192, 'NO_HOLE zeroing allocates');
  t.true((await readAll(m, 0, 16384)).equals(Buffer.concat([Buffer.alloc(8192), Buffer.alloc(4096, 1), Buffer.alloc(4096)])));

  const { mkdtemp, rm, writeFile, readFile } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const dir = await mkdtemp(`${tmpdir()}/nbd-file-`);
  try {
    await writeFile(`${dir}/f.raw`, Buffer.alloc(64 * KiB));
    const f = await FileDevice.open(`${dir}/f.raw`);
    t.is(f.size, 64 * KiB);
    await f.write(pattern(1000, 1), 3000);
    await f.flush();
    const back = Buffer.alloc(1000);
    await f.read(back, 3000);
    t.true(back.equals(pattern(1000, 1)));
    await f.close();
    t.true((await readFile(`${dir}/f.raw`)).subarray(3000, 4000).equals(pattern(1000, 1)));
    const ro = await FileDevice.open(`${dir}/f.raw`, { readOnly: true });
    t.deepEqual(operationsOf(ro), []);
    await ro.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  t.deepEqual(operationsOf(new PassthroughDevice(new ReadOnlyDevice(m))), ['flush', 'extents']);
});

test('refresh with grow: a larger device is taken; connections keep the size they negotiated, new ones get the new size', async (t) => {
  const first = new MemoryDevice(4 * MiB);
  const pausable = new PausableDevice(first);
  await withServer({}, async (s) => {
    s.server.addExport('d', pausable);
    const before = await RawClient.open(s.socket, 'd');
    await pausable.pause();
    t.throws(() => pausable.refresh(new MemoryDevice(2 * MiB), { grow: true }), { message: /smaller/ }, 'never shrinks');
    const bigger = new MemoryDevice(8 * MiB);
    pausable.refresh(bigger, { grow: true });
    pausable.unpause();
    t.is(pausable.size, 8 * MiB);
    before.request(CMD.WRITE, 6 * MiB, 512, { payload: Buffer.alloc(512, 1) });
    t.is((await before.simpleReply())?.error, 28, 'past the size it negotiated: ENOSPC');
    const after = await RawClient.connect(s.socket);
    await after.greet();
    const go = await after.go('d');
    t.deepEqual('size' in go ? go.size : go, BigInt(8 * MiB), 'a new connection sees the new size');
    after.request(CMD.WRITE, 6 * MiB, 512, { payload: Buffer.alloc(512, 2) });
    t.is((await after.simpleReply())?.error, 0);
    before.destroy();
    after.destroy();
  });
});
