// Eight workers, each a loop of real driver processes (argv XML-RPC, one
// process per call), issue seeded random verb mixes on one File SR while the
// GC runs (started by the drivers, and `sm-gc -g` in a loop). Each worker owns
// its VDIs and their model: it writes only while its VDI is attached and
// activated, through the datapath the activation started (NBD, then a flush),
// reads back through the socket vdi_attach returned, and compares. Scans and SR detach/attach cycles are shared.
// Every reply must be a success or a fault whose code the situation explains;
// no call may hang; at the end every VDI reads as its model, every image passes
// check, metadata matches the images, and no journal or stray file is left.
// SM_SEED=<n> replays a run; SM_SOAK=<seconds> runs longer.
import test from 'ava';
import { MiB, pattern, SparseDisk } from '../helpers/model.js';
import { SeededRandom } from '../helpers/random.js';
import { callDriver, createArgs, gc, makeSmEnv, readSmlog, request, sleep, smGc, waitForStartedGcs, xml, type SmEnv } from '../helpers/sm.js';
import { nbdSocket, openNbd } from '../helpers/nbd-vdi.js';
import { assertConsistent, hostLeftovers, writeVdi } from '../helpers/sr-state.js';

const SEED = Number(process.env.SM_SEED ?? Math.floor(Math.random() * 1e9));
const DURATION_MS = Number(process.env.SM_SOAK ?? 40) * 1000;
const WORKERS = 8;
/** The drivers' lock wait (SM_LOCK_TIMEOUT_MS): LockErr is allowed only after it. */
const LOCK_TIMEOUT_MS = 30_000;
/** No call may take longer: a driver still running then is killed and counted as hung. */
const CALL_BOUND_MS = 60_000;

interface Outcome {
  worker: number;
  verb: string;
  /** 0 for a success, else the SM fault code. */
  code: number;
  message: string;
  start: number;
  end: number;
  /** When the worker's operation (e.g. an attach/activate/write/detach session) began. */
  opStart: number;
}

/** Times the SR was detached: from the sr_detach call to the answer of the sr_attach that followed. */
class DetachWindows {
  private readonly spans: { from: number; to: number }[] = [];
  private open = 0;

  begin(at: number): { end(at: number): void } {
    this.open++;
    const span = { from: at, to: Infinity };
    this.spans.push(span);
    return {
      end: (to: number) => {
        span.to = to;
        this.open--;
      },
    };
  }

  overlaps(from: number, to: number): boolean {
    return this.spans.some((s) => s.from <= to && s.to >= from);
  }
}

/** Why a fault is acceptable in its situation, or undefined when it is not. */
function explained(o: Outcome, windows: DetachWindows): string | undefined {
  const detached = windows.overlaps(o.opStart, o.end);
  switch (o.code) {
    case 47:
      return detached && o.verb !== 'sr_attach' ? 'SR detached meanwhile' : undefined;
    case 46:
      // An SR detach wipes the host's attach state: activating then finds the VDI not attached.
      return detached && o.verb === 'vdi_activate' ? 'attach state wiped by an SR detach' : undefined;
    case 16:
      return o.verb === 'sr_detach' ? 'VDIs active or the GC busy' : undefined;
    case 37:
      return o.end - o.start >= LOCK_TIMEOUT_MS ? 'lock wait exceeded' : undefined;
    default:
      return undefined;
  }
}

class Run {
  readonly outcomes: Outcome[] = [];
  readonly windows = new DetachWindows();
  readonly hung: string[] = [];
  readonly dataErrors: string[] = [];
  readonly gcRuns: { code: number | null; start: number; end: number }[] = [];
  /** Which worker owns each VDI. */
  readonly owner = new Map<string, number>();
  ops = 0;

  constructor(readonly ctx: SmEnv) {}

  /** One driver process; the fault code (0 = success) and the value. */
  async call(worker: number, opStart: number, verb: string, extra: Record<string, unknown> = {}): Promise<{ code: number; value: unknown }> {
    const start = Date.now();
    const r = await callDriver(verb, request(this.ctx, verb, extra), this.ctx.env, { killAfterMs: CALL_BOUND_MS });
    const end = Date.now();
    if (r.signal) this.hung.push(`${verb} of worker ${worker}: killed by ${r.signal} after ${end - start} ms`);
    const code = r.response.kind === 'fault' ? r.response.faultCode : 0;
    const message = r.response.kind === 'fault' ? r.response.faultString : '';
    this.outcomes.push({ worker, verb, code, message, start, end, opStart });
    return { code, value: r.response.kind === 'fault' ? undefined : r.response.value };
  }
}

const vdiArgs = (uuid: string, extra: Record<string, unknown> = {}) => ({ vdi_uuid: uuid, vdi_location: uuid, ...extra });

/** One worker: its own VDIs and their models, random operations until the deadline. */
async function worker(run: Run, id: number, deadline: number, models: Map<string, SparseDisk>): Promise<void> {
  const rng = new SeededRandom(SEED * 31 + id);
  const owner = run.owner;
  const mine = () => [...models.keys()].filter((u) => owner.get(u) === id);
  let writes = 0;
  while (Date.now() < deadline) {
    const opStart = Date.now();
    const vdis = mine();
    const op = rng.weighted({
      create: vdis.length < 3 ? 3 : 0,
      snapshot: vdis.length > 0 && vdis.length < 5 ? 2 : 0,
      clone: vdis.length > 0 && vdis.length < 5 ? 1 : 0,
      delete: vdis.length > 1 ? 2 : 0,
      resize: vdis.length > 0 ? 1 : 0,
      session: vdis.length > 0 ? 4 : 0,
      scan: 1,
      srCycle: 0.75,
    });
    run.ops++;
    const u = vdis.length ? rng.pick(vdis) : '';
    switch (op) {
      case 'create': {
        const size = rng.int(1, 4) * 2 * MiB;
        const r = await run.call(id, opStart, 'vdi_create', { args: createArgs(size, `w${id}`), vdi_type: 'user' });
        if (r.code === 0) {
          const uuid = (r.value as { uuid: string }).uuid;
          models.set(uuid, new SparseDisk(size));
          owner.set(uuid, id);
        }
        break;
      }
      case 'snapshot':
      case 'clone': {
        const r = await run.call(id, opStart, op === 'snapshot' ? 'vdi_snapshot' : 'vdi_clone', vdiArgs(u));
        if (r.code === 0) {
          const uuid = (r.value as { uuid: string }).uuid;
          models.set(uuid, models.get(u)!.copy());
          owner.set(uuid, id);
        }
        break;
      }
      case 'delete': {
        const r = await run.call(id, opStart, 'vdi_delete', vdiArgs(u));
        if (r.code === 0) models.delete(u);
        break;
      }
      case 'resize': {
        const model = models.get(u)!;
        if (model.size >= 16 * MiB) break;
        const size = model.size + 2 * MiB;
        const r = await run.call(id, opStart, 'vdi_resize', vdiArgs(u, { args: [String(size)] }));
        if (r.code === 0) model.grow(size);
        break;
      }
      case 'session':
        await session(run, id, opStart, u, models.get(u)!, rng, writes++);
        break;
      case 'scan':
        await run.call(id, opStart, 'sr_scan');
        break;
      case 'srCycle': {
        const window = run.windows.begin(opStart);
        const detached = await run.call(id, opStart, 'sr_detach');
        if (detached.code !== 0) {
          window.end(Date.now());
          break;
        }
        await sleep(rng.int(100, 600));
        const attached = await run.call(id, opStart, 'sr_attach');
        window.end(Date.now());
        if (attached.code !== 0) run.dataErrors.push(`sr_attach after a detach failed: ${attached.code}`);
        break;
      }
    }
  }
}

/** Attach and activate (writable), write and read back through the VDI's NBD socket, deactivate, detach. */
async function session(run: Run, id: number, opStart: number, u: string, model: SparseDisk, rng: SeededRandom, n: number): Promise<void> {
  const attach = await run.call(id, opStart, 'vdi_attach', vdiArgs(u, { args: ['true'] }));
  if (attach.code !== 0) return;
  const path = (attach.value as { params: string }).params;
  const activate = await run.call(id, opStart, 'vdi_activate', vdiArgs(u, { args: ['true'] }));
  if (activate.code === 0) {
    const length = rng.int(1, 512) * 1024;
    const offset = rng.int(0, model.size - length);
    const data = pattern(SEED + id * 100_000 + n, length);
    await writeVdi(run.ctx, u, offset, data, 'cli');
    model.write(offset, data);
    if (path !== nbdSocket(run.ctx, u)) run.dataErrors.push(`worker ${id}: vdi_attach gave ${path}, not the VDI's NBD socket`);
    try {
      const c = await openNbd(run.ctx, u);
      let same = true;
      for (let at = 0; at < model.size && same; at += 4 * MiB) {
        const n = Math.min(4 * MiB, model.size - at);
        same = (await c.read(at, n)).equals(model.read(at, n));
      }
      c.close();
      if (!same) run.dataErrors.push(`worker ${id}: ${u} read back differs from its model`);
    } catch (err) {
      run.dataErrors.push(`worker ${id}: reading ${u} through NBD failed: ${(err as Error).message}`);
    }
    await run.call(id, opStart, 'vdi_deactivate', vdiArgs(u));
  }
  await run.call(id, opStart, 'vdi_detach', vdiArgs(u));
}

/** `sm-gc -g` again and again until `stop` says so. */
async function gcLoop(run: Run, stop: () => boolean): Promise<void> {
  while (!stop()) {
    const start = Date.now();
    const r = await smGc(run.ctx, ['-g'], run.ctx.env, CALL_BOUND_MS);
    run.gcRuns.push({ code: r.signal ? -1 : r.code, start, end: Date.now() });
    if (r.signal) run.hung.push(`sm-gc -g killed by ${r.signal}`);
    await sleep(200);
  }
}

const percentile = (sorted: number[], p: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] : 0);

test(`${WORKERS} workers of random verbs on one File SR while the GC runs: no corruption, no hang, every fault explained`, async (t) => {
  t.timeout(DURATION_MS + 240_000);
  t.log(`seed ${SEED} (SM_SEED=${SEED} replays it), ${DURATION_MS / 1000} s`);
  const ctx = await makeSmEnv({ gc: true, extra: { SM_LOCK_TIMEOUT_MS: String(LOCK_TIMEOUT_MS) } });
  try {
    await xml(ctx, 'sr_create', { args: ['0'], sr_sm_config: { name_label: 'verb mix' } });
    await xml(ctx, 'sr_attach');
    const run = new Run(ctx);
    const models = new Map<string, SparseDisk>();
    const started = Date.now();
    const deadline = started + DURATION_MS;
    let done = false;
    const gcs = gcLoop(run, () => done);
    await Promise.all(Array.from({ length: WORKERS }, (_, i) => worker(run, i, deadline, models)));
    done = true;
    await gcs;
    const elapsed = Date.now() - started;

    // Every reply a success or an explained fault; nothing hung.
    const unexplained = run.outcomes.filter((o) => o.code !== 0 && !explained(o, run.windows)).map((o) => `${o.verb} (worker ${o.worker}): ${o.code} ${o.message}`);
    t.deepEqual(unexplained, [], 'every fault has a code its situation explains');
    t.deepEqual(run.hung, [], `no call ran longer than ${CALL_BOUND_MS} ms`);
    t.deepEqual(run.dataErrors, [], 'every read back matched the model');
    const badGc = run.gcRuns.filter((g) => g.code !== 0 && !(g.code === 1 && run.windows.overlaps(g.start, g.end)));
    t.deepEqual(badGc, [], 'every sm-gc run ended well (or found the SR detached)');

    // The end state: let the GCs finish, one more scan and collection, then the invariants.
    await waitForStartedGcs(ctx, 120_000);
    await xml(ctx, 'sr_scan');
    await waitForStartedGcs(ctx, 120_000);
    await gc(ctx);
    await assertConsistent(t, ctx, models, { scanned: true });
    t.deepEqual(hostLeftovers(ctx), [], 'no VDI state, lock or activation left on the host');

    // Figures: calls, faults by code, lock waits (SMlog records every wait for the SR lock).
    const byCode: Record<string, number> = {};
    for (const o of run.outcomes) if (o.code !== 0) byCode[o.code] = (byCode[o.code] ?? 0) + 1;
    const log = readSmlog(ctx);
    const waits = [...log.matchAll(/ SM: \[\d+\] sr lock of SR \S+ taken after waiting (\d+) ms/g)].map((m) => Number(m[1]));
    const lockTaking = run.outcomes.filter((o) => o.verb !== 'sr_probe').length;
    const all = [...waits, ...Array(Math.max(0, lockTaking - waits.length)).fill(0)].sort((a, b) => a - b);
    const callMs = run.outcomes.map((o) => o.end - o.start).sort((a, b) => a - b);
    t.log(
      `${WORKERS} workers, ${elapsed} ms: ${run.ops} operations, ${run.outcomes.length} driver calls, ${run.gcRuns.length} sm-gc runs, ` +
        `${models.size} VDIs at the end; faults by code: ${JSON.stringify(byCode)}; ` +
        `SR lock waits: ${waits.length} of ${lockTaking} calls waited, max ${all.at(-1) ?? 0} ms, p95 ${percentile(all, 95)} ms; ` +
        `call time max ${callMs.at(-1)} ms, p95 ${percentile(callMs, 95)} ms; data lost 0, corrupt images 0 (asserted above)`,
    );
    for (let i = 0; i < WORKERS; i++) t.true(run.outcomes.some((o) => o.worker === i && o.code === 0), `worker ${i} got work done`);
    t.true((all.at(-1) ?? 0) < LOCK_TIMEOUT_MS, 'every lock wait stayed under the timeout');
  } finally {
    await ctx.cleanup();
  }
});
