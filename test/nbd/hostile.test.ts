// Hostile and broken peers on a raw socket: each gets the protocol's error or a
// closed connection, and a well-behaved client on the same server still works
// while the device content stays intact.
import type { ExecutionContext } from 'ava';
import test from 'ava';
import { DeviceError, MemoryDevice, PassthroughDevice, ReadOnlyDevice } from '../../lib/nbd/index.js';
import {
  CMD,
  EINVAL,
  ENOSPC,
  EPERM,
  MiB,
  OPT,
  pattern,
  RawClient,
  readAll,
  REP_ACK,
  REP_ERR_INVALID,
  REP_ERR_UNKNOWN,
  REP_ERR_UNSUP,
  SlowDevice,
  sleep,
  withServer,
  type Served,
} from './helpers.js';

const SIZE = 4 * MiB;
const CONTENT = pattern(SIZE, 42);

async function freshDevice(): Promise<MemoryDevice> {
  const d = new MemoryDevice(SIZE);
  await d.write(CONTENT, 0);
  return d;
}

/** The server still serves a good client, and the bytes are what they were. */
async function stillHealthy(t: ExecutionContext, s: Served, device: MemoryDevice): Promise<void> {
  const good = await RawClient.open(s.socket, 'd');
  t.true((await good.read_(MiB, 64 * 1024)).equals(CONTENT.subarray(MiB, MiB + 64 * 1024)));
  good.destroy();
  t.true((await readAll(device)).equals(CONTENT), 'device content changed');
  t.is(s.log.lines.filter((l) => l.startsWith('error')).length, 0, s.log.lines.join('\n'));
}

async function served(fn: (s: Served, device: MemoryDevice) => Promise<void>, options = {}): Promise<void> {
  const device = await freshDevice();
  await withServer(options, async (s) => {
    s.server.addExport('d', device);
    s.server.addExport('ro', new ReadOnlyDevice(device));
    await fn(s, device);
  });
}

test('handshake: unknown client flags and bad option magic close the connection', async (t) => {
  await served(async (s, device) => {
    const a = await RawClient.connect(s.socket);
    await a.greet(0x80 | 3);
    await a.closed;
    const b = await RawClient.connect(s.socket);
    await b.greet();
    b.sendOption(OPT.GO, Buffer.alloc(6), 0x1234n);
    await b.closed;
    t.true(s.log.lines.some((l) => /unknown client flags/.test(l)));
    t.true(s.log.lines.some((l) => /bad option magic/.test(l)));
    await stillHealthy(t, s, device);
  });
});

test('handshake: unknown option, STARTTLS and EXTENDED_HEADERS get ERR_UNSUP with their data consumed', async (t) => {
  await served(async (s, device) => {
    const c = await RawClient.connect(s.socket);
    await c.greet();
    c.sendOption(99, pattern(3000, 1));
    t.is((await c.optionReply())?.type, REP_ERR_UNSUP);
    c.sendOption(OPT.STARTTLS);
    t.is((await c.optionReply())?.type, REP_ERR_UNSUP);
    c.sendOption(OPT.EXTENDED_HEADERS);
    t.is((await c.optionReply())?.type, REP_ERR_UNSUP);
    c.sendOption(OPT.STRUCTURED_REPLY, Buffer.from('x'));
    t.is((await c.optionReply())?.type, REP_ERR_INVALID);
    c.sendOption(OPT.SET_META_CONTEXT, Buffer.alloc(8));
    t.is((await c.optionReply())?.type, REP_ERR_INVALID, 'SET_META_CONTEXT before STRUCTURED_REPLY');
    c.sendOption(OPT.GO, Buffer.alloc(3));
    t.is((await c.optionReply())?.type, REP_ERR_INVALID);
    t.deepEqual(await c.go('nope'), { error: REP_ERR_UNKNOWN });
    // The stream is still in step: GO on a real export works on this same connection.
    const go = await c.go('d');
    t.deepEqual(go, { size: BigInt(SIZE), flags: (go as { flags: number }).flags });
    t.true((await c.read_(0, 4096)).equals(CONTENT.subarray(0, 4096)));
    c.destroy();
    await stillHealthy(t, s, device);
  });
});

test('handshake: EXPORT_NAME of an unknown export closes; ABORT is acknowledged; option count and length are bounded', async (t) => {
  await served(async (s, device) => {
    const a = await RawClient.connect(s.socket);
    await a.greet();
    a.sendOption(OPT.EXPORT_NAME, Buffer.from('nope'));
    await a.closed;
    const b = await RawClient.connect(s.socket);
    await b.greet();
    b.sendOption(OPT.ABORT);
    t.is((await b.optionReply())?.type, REP_ACK);
    await b.closed;
    const c = await RawClient.connect(s.socket);
    await c.greet();
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(0x49484156454f5054n, 0);
    h.writeUInt32BE(99, 8);
    h.writeUInt32BE(0xffffffff, 12); // 4 GiB of option data: not read, the connection goes
    c.write(h);
    await c.closed;
    const d = await RawClient.connect(s.socket);
    await d.greet();
    for (let i = 0; i < 200; i++) d.sendOption(99);
    let replies = 0;
    while (await d.optionReply()) replies++;
    t.true(replies <= 128 && replies > 0);
    await d.closed;
    // EXPORT_NAME on a known export, without NO_ZEROES: size, flags and 124 zero bytes.
    const e = await RawClient.connect(s.socket);
    await e.greet(1);
    e.sendOption(OPT.EXPORT_NAME, Buffer.from('d'));
    const tail = await e.read(134);
    t.is(tail?.readBigUInt64BE(0), BigInt(SIZE));
    t.true(tail?.subarray(10).equals(Buffer.alloc(124)));
    t.true((await e.read_(4096, 4096)).equals(CONTENT.subarray(4096, 8192)));
    e.destroy();
    await stillHealthy(t, s, device);
  });
});

test('transmission: each invalid request gets its errno and the device is not called', async (t) => {
  await served(async (s, device) => {
    const c = await RawClient.open(s.socket, 'd');
    const before = { ...device.calls };
    const expect = async (what: string, errno: number) => {
      const r = await c.simpleReply();
      t.is(r?.error, errno, what);
    };
    c.request(42, 0, 512);
    await expect('unknown command', EINVAL);
    c.request(CMD.READ, SIZE - 512, 1024);
    await expect('read past the end', EINVAL);
    c.request(CMD.READ, 2n ** 63n, 512);
    await expect('read at a huge offset', EINVAL);
    c.request(CMD.WRITE, SIZE - 512, 1024, { payload: Buffer.alloc(1024, 0xff) });
    await expect('write past the end (payload consumed)', ENOSPC);
    c.request(CMD.WRITE_ZEROES, SIZE, 512);
    await expect('zeroes past the end', ENOSPC);
    c.request(CMD.TRIM, SIZE - 1, 2);
    await expect('trim past the end', EINVAL);
    c.request(CMD.READ, 0, 33 * MiB);
    await expect('read over the payload limit', EINVAL);
    c.request(CMD.READ, 0, 512, { flags: 1 << 2 });
    await expect('DF without structured replies', EINVAL);
    c.request(CMD.WRITE, 0, 512, { flags: 1 << 3, payload: Buffer.alloc(512, 0xff) });
    await expect('REQ_ONE on a write', EINVAL);
    c.request(CMD.BLOCK_STATUS, 0, 512);
    await expect('BLOCK_STATUS without a meta context', EINVAL);
    c.request(CMD.CACHE, 0, 512);
    await expect('CACHE (not offered)', EINVAL);
    c.request(CMD.READ, 0, 0);
    await expect('zero-length read', EINVAL);
    // An over-long WRITE is refused and its payload skipped: the next request is in step.
    c.request(CMD.WRITE, 0, 40 * MiB, { payload: Buffer.alloc(40 * MiB, 0xff) });
    await expect('write over the payload limit', EINVAL);
    t.true((await c.read_(0, 512)).equals(CONTENT.subarray(0, 512)));
    t.is(device.calls.write, before.write);
    t.is(device.calls.zero, before.zero);
    t.is(device.calls.trim, before.trim);
    c.destroy();

    const ro = await RawClient.open(s.socket, 'ro');
    ro.request(CMD.WRITE, 0, 4096, { payload: Buffer.alloc(4096, 0xff) });
    t.is((await ro.simpleReply())?.error, EPERM, 'write to read-only');
    ro.request(CMD.WRITE_ZEROES, 0, 4096);
    t.is((await ro.simpleReply())?.error, EPERM, 'zeroes to read-only');
    t.true((await ro.read_(0, 4096)).equals(CONTENT.subarray(0, 4096)));
    ro.destroy();

    // A WRITE too long to skip sensibly drops the connection.
    const big = await RawClient.open(s.socket, 'd');
    big.request(CMD.WRITE, 0, 0xffffffff, { payload: Buffer.alloc(4096, 0xff) });
    t.is(await big.simpleReply(), undefined);
    await big.closed;
    await stillHealthy(t, s, device);
  });
});

test('transmission: bad request magic and random garbage close only that connection', async (t) => {
  await served(async (s, device) => {
    const c = await RawClient.open(s.socket, 'd');
    const bad = Buffer.alloc(28, 0x41);
    c.write(bad);
    await c.closed;
    for (let seed = 1; seed <= 20; seed++) {
      const g = await RawClient.connect(s.socket);
      if (seed % 2) await g.greet();
      g.write(pattern(100 + seed * 37, seed));
      g.socket.end();
      await g.closed;
    }
    // Garbage after a valid handshake, too.
    for (let seed = 21; seed <= 30; seed++) {
      const g = await RawClient.open(s.socket, 'd');
      g.write(pattern(1000, seed));
      g.socket.end();
      await g.closed;
    }
    await stillHealthy(t, s, device);
  });
});

test('a client that disconnects mid-request leaves the server and other clients unharmed', async (t) => {
  const device = await freshDevice();
  await withServer({}, async (s) => {
    s.server.addExport('d', device);
    s.server.addExport('slow', new SlowDevice(device, 100, true));
    // Half a WRITE payload, then gone: nothing is written.
    const a = await RawClient.open(s.socket, 'd');
    a.request(CMD.WRITE, 0, 64 * 1024);
    a.write(Buffer.alloc(1000, 0xff));
    await sleep(20);
    a.destroy();
    // Requests in flight on a slow device when the client goes: their replies have nowhere to go.
    const b = await RawClient.open(s.socket, 'slow');
    for (let i = 0; i < 8; i++) b.request(CMD.READ, i * 4096, 4096, { cookie: BigInt(i) });
    await sleep(20);
    b.destroy();
    for (let i = 0; i < 100 && s.server.connectionCount > 0; i++) await sleep(20);
    t.is(s.server.connectionCount, 0, 'both connections cleaned up');
    t.true(s.log.lines.some((l) => /closed export "slow"/.test(l)));
    await stillHealthy(t, s, device);
  });
});

test('many requests in flight: replies come back (out of order allowed) with their cookies', async (t) => {
  const device = await freshDevice();
  await withServer({ maxInFlightRequests: 8 }, async (s) => {
    s.server.addExport('slow', new SlowDevice(device, 5, true));
    const c = await RawClient.open(s.socket, 'slow');
    const n = 100;
    for (let i = 0; i < n; i++) c.request(CMD.READ, (i * 4096) % SIZE, 4096, { cookie: BigInt(1000 + i) });
    const seen = new Set<bigint>();
    for (let i = 0; i < n; i++) {
      const r = await c.simpleReply(4096);
      t.is(r?.error, 0);
      const k = Number(r!.cookie) - 1000;
      t.true(r!.data!.equals(CONTENT.subarray((k * 4096) % SIZE, ((k * 4096) % SIZE) + 4096)));
      seen.add(r!.cookie);
    }
    t.is(seen.size, n);
    c.request(CMD.DISC, 0, 0);
    await c.closed;
  });
});

test('a flood of connections is bounded; idle handshakes time out; a good client gets in afterwards', async (t) => {
  await served(
    async (s, device) => {
      const flood = await Promise.all(Array.from({ length: 40 }, () => RawClient.connect(s.socket)));
      let maxSeen = 0;
      let allClosed = false;
      const closing = Promise.all(flood.map((c) => c.closed)).then(() => (allClosed = true));
      while (!allClosed) {
        maxSeen = Math.max(maxSeen, s.server.connectionCount);
        await sleep(5);
      }
      await closing;
      const count = (re: RegExp) => s.log.lines.filter((l) => re.test(l)).length;
      t.true(maxSeen <= 8, `${maxSeen} connections open at once`);
      // Each was either refused at once or, never finishing its handshake, timed out.
      t.true(count(/refusing a connection/) >= 8);
      t.is(count(/refusing a connection/) + count(/handshake not finished/), 40);
      await stillHealthy(t, s, device);
    },
    { maxConnections: 8, handshakeTimeoutMs: 300 },
  );
});

test('device failures reach the client as NBD errnos from the one table, and the connection carries on', async (t) => {
  const memory = await freshDevice();
  class FailingDevice extends PassthroughDevice {
    override async write(data: Buffer, offset: number) {
      if (offset === 0) throw new DeviceError('ENOSPC', 'full');
      if (offset === 4096) throw Object.assign(new Error('quota'), { code: 'EDQUOT' });
      if (offset === 8192) throw Object.assign(new Error('ro fs'), { code: 'EROFS' });
      return super.write(data, offset);
    }
    override async read(buf: Buffer, offset: number) {
      if (offset === 0) throw new Error('media error');
      return super.read(buf, offset);
    }
  }
  await withServer({}, async (s) => {
    s.server.addExport('f', new FailingDevice(memory));
    const c = await RawClient.open(s.socket, 'f');
    const errnoOf = async (type: number, offset: number) => {
      c.request(type, offset, 512, type === CMD.WRITE ? { payload: Buffer.alloc(512, 0xff) } : {});
      return (await c.simpleReply())?.error;
    };
    t.is(await errnoOf(CMD.WRITE, 0), ENOSPC);
    t.is(await errnoOf(CMD.WRITE, 4096), ENOSPC);
    t.is(await errnoOf(CMD.WRITE, 8192), EPERM);
    t.is(await errnoOf(CMD.READ, 0), 5); // EIO: an error without a code
    t.true((await c.read_(MiB, 512)).equals(CONTENT.subarray(MiB, MiB + 512)));
    c.destroy();
  });
  t.true((await readAll(memory)).equals(CONTENT));
});
