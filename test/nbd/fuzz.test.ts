// The seeded protocol fuzzer (test/nbd/fuzz.ts) against an NbdServer over a
// device of known content, and against a real sm-datapath serving a VDI
// through the SM. For each case: the server answers as the protocol allows or
// closes that connection, never crashes, a well-behaved client connected the
// whole time keeps working and reads the right bytes, and the device changes
// only where a write the protocol allows was sent.
//
// NBD_FUZZ_CASES sets the cases of each kind (default 150 in-process, a third
// of that through the SM); NBD_FUZZ_SEED replays a run (a failure prints its
// seed and case).
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { controlCall } from '../../lib/datapath/control.js';
import { MemoryDevice, ReadOnlyDevice } from '../../lib/nbd/index.js';
import { SeededRandom } from '../helpers/random.js';
import { datapathPids, waitFor } from '../helpers/sm.js';
import { openNbd, shortSocket, type NbdVdiClient } from '../helpers/nbd-vdi.js';
import { withWorld } from '../helpers/world.js';
import { handshakeCase, Outcomes, transmissionCase, type FuzzTarget } from './fuzz.js';
import { MiB, pattern, RawClient, readAll, withServer } from './helpers.js';

const CASES = Number(process.env.NBD_FUZZ_CASES ?? 150);
const SEED = Number(process.env.NBD_FUZZ_SEED ?? 20261206);

/** The well-behaved client: writes and reads back its own range (the protected one) for as long as the fuzz runs. */
function keepWorking(good: RawClient, from: number, size: number, initial: Buffer): { stop(): Promise<{ rounds: number; own: Buffer }> } {
  const own = Buffer.from(initial);
  let stopped = false;
  let rounds = 0;
  const loop = (async () => {
    for (let k = 0; !stopped; k++) {
      const off = from + ((k * 4096) % (size - from));
      const data = pattern(4096, 5000 + k);
      good.request(1, off, data.length, { cookie: BigInt(k + 1), payload: data });
      const r = await good.simpleReply();
      if (r?.error !== 0) throw new Error(`the well-behaved client's write got ${r ? `errno ${r.error}` : 'no reply'}`);
      data.copy(own, off - from);
      if (!(await good.read_(from, size - from)).equals(own)) throw new Error("the well-behaved client's range does not read back");
      rounds++;
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      return { rounds, own };
    },
  };
}

/** Runs `cases` of each kind against `target`; fails at the first wrong answer with its seed and case. */
async function fuzz(
  t: ExecutionContext,
  label: string,
  cases: number,
  target: FuzzTarget,
  model: Buffer,
  good: RawClient,
  check: (i: number) => Promise<void>,
): Promise<{ out: Outcomes; protectedBytes: Buffer }> {
  const out = new Outcomes();
  const worker = keepWorking(good, target.protectedFrom, target.size, await target.readDevice(target.protectedFrom, target.size - target.protectedFrom));
  const started = Date.now();
  let protectedBytes: Buffer;
  try {
    for (let i = 0; i < cases; i++) {
      const rng = new SeededRandom(SEED * 7919 + i);
      const h = await handshakeCase(target, rng, out);
      if (h !== undefined) t.fail(`${label}: handshake case ${i} (NBD_FUZZ_SEED=${SEED}): ${h}`);
      const x = await transmissionCase(target, rng, model, out);
      if (x !== undefined) t.fail(`${label}: transmission case ${i} (NBD_FUZZ_SEED=${SEED}): ${x}`);
      if (h !== undefined || x !== undefined) break;
      await check(i);
    }
  } finally {
    const { rounds, own } = await worker.stop();
    out.add('well-behaved client rounds', rounds);
    protectedBytes = own;
  }
  t.log(`${label}: ${cases} handshake + ${cases} transmission cases, seed ${SEED}, ${((Date.now() - started) / 1000).toFixed(1)} s`);
  t.log(`${label}: ${out.text()}`);
  return { out, protectedBytes };
}

test('fuzzed handshakes and requests against an NbdServer over a memory device', async (t) => {
  const SIZE = 4 * MiB;
  const device = new MemoryDevice(SIZE);
  await device.write(pattern(SIZE, 42), 0);
  await withServer({ handshakeTimeoutMs: 5_000 }, async (s) => {
    s.server.addExport('d', device);
    s.server.addExport('ro', new ReadOnlyDevice(device));
    const good = await RawClient.open(s.socket, 'd');
    const reader = await RawClient.open(s.socket, 'd');
    const target: FuzzTarget = {
      socket: s.socket,
      writable: 'd',
      readOnly: 'ro',
      size: SIZE,
      protectedFrom: SIZE - 256 * 1024,
      readDevice: (offset, length) => readAll(device, offset, length),
      settled: () => waitFor('the fuzzed connection to be let go', () => s.server.connectionCount === 2 || undefined, 10_000, 2).then(() => undefined),
    };
    const model = await readAll(device, 0, target.protectedFrom);
    const { out } = await fuzz(t, 'NbdServer', CASES, target, model, good, async (i) => {
      // Between cases a second well-behaved client reads the fuzzed range.
      const at = (i * 65536) % target.protectedFrom;
      t.true((await reader.read_(at, 65536)).equals(model.subarray(at, at + 65536)), `case ${i}: a well-behaved client reads the model`);
    });
    good.destroy();
    reader.destroy();
    t.false(s.server.closed);
    t.deepEqual(s.log.lines.filter((l) => l.startsWith('error')), [], 'no server error logged');
    t.true((out.counts.get('reply OK') ?? 0) > 0 && (out.counts.get('reply EINVAL') ?? 0) > 0, 'both accepted and refused requests');
    t.true((out.counts.get('closed by the server: bad magic') ?? 0) > 0, 'some connections closed for bad magic');
  });
});

test('fuzzed handshakes and requests against sm-datapath serving a VDI through the SM', async (t) => {
  await withWorld(async (w, ctx) => {
    const SIZE = 8 * MiB;
    const V = await w.create('V', SIZE);
    await w.s.call('vdi_attach', { vdi_uuid: V, vdi_location: V, args: ['true'] });
    await w.s.call('vdi_activate', { vdi_uuid: V, vdi_location: V, args: ['true'] });
    const [pid] = datapathPids(ctx.root);
    const sock = shortSocket(ctx, V);
    const good = await RawClient.open(sock, V);
    const reader: NbdVdiClient = await openNbd(ctx, V);
    await reader.write(0, pattern(SIZE, 7));
    await reader.flush();
    const control = path.join(ctx.root, 'run', 'sm', 'datapath', `${ctx.sr}.sock`);
    const clients = async () => (await controlCall(control, { op: 'list' })).served?.find((x) => x.vdi === V)?.clients;
    const target: FuzzTarget = {
      socket: sock,
      writable: V,
      size: SIZE,
      protectedFrom: SIZE - 512 * 1024,
      readDevice: (offset, length) => reader.read(offset, length),
      settled: () => waitFor('the fuzzed connection to be let go', async () => ((await clients()) === 2 ? true : undefined), 10_000, 5).then(() => undefined),
    };
    const model = await reader.read(0, target.protectedFrom);
    const { out, protectedBytes } = await fuzz(t, 'sm-datapath', Math.ceil(CASES / 3), target, model, good, async () => {});
    good.destroy();
    reader.close();
    t.deepEqual(datapathPids(ctx.root), [pid], 'the same datapath process serves on');
    t.true((out.counts.get('reply OK') ?? 0) > 0);
    await w.s.call('vdi_deactivate', { vdi_uuid: V, vdi_location: V });
    await w.s.call('vdi_detach', { vdi_uuid: V, vdi_location: V });
    const m = w.models.get(V)!;
    m.write(0, model);
    m.write(target.protectedFrom, protectedBytes);
    await w.check(t);
  });
});
