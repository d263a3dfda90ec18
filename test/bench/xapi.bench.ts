/**
 * What keeping the toolstack's database in step costs a verb: vdi_create and
 * vdi_snapshot through the FileSR executable, one process per call as xapi
 * runs it, on an SR with the stand-in xapi listening at its socket
 * (test/helpers/xapi-standin.ts: xapi itself cannot run here) and on an SR
 * without one (standalone), alternating call by call in the same run.
 *
 * Twice: with no resident server (the process answers the call, its XenAPI
 * calls made by code run for the first time), and with the driver's resident
 * server running on each side (each process hands its call over, and the
 * server, long warm, makes the XenAPI calls): the difference between the two
 * is what a fresh process adds to the same calls.
 */
import { readFileSync, statSync } from 'node:fs';
import { createArgs, makeSmEnv, residentSocket, SESSION_SECRET, startServer, xml, type Server, type SmEnv } from '../helpers/sm.js';
import { XapiStandin } from '../helpers/xapi-standin.js';
import { HOST_REF, SR_REF, xapiSocket } from '../xapi/standin-world.js';
import { percentile, report, timed } from './measure.js';

const ROUNDS = Number(process.env.BENCH_XAPI_ROUNDS ?? 12);

type Verb = 'create' | 'snapshot';

/** This process's CPU time since `from`, in ms. */
function cpuMs(from: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(from);
  return (d.user + d.system) / 1000;
}

interface Figures {
  ms: Record<Verb, number[]>;
  /** Each verb's own time as SMlog gives it (`<verb> done in N ms`): without the process's start, whose spread is larger than what is measured here. */
  inVerb: Record<Verb, number[]>;
  /** CPU time of this process during each call: the spawn and pipes, and with the endpoint the stand-in serving the calls. */
  cpu: Record<Verb, number[]>;
  /** XenAPI calls the stand-in received during each verb (with the endpoint only). */
  calls: Record<Verb, number[]>;
}

interface Side {
  ctx: SmEnv;
  xapi?: XapiStandin;
  resident?: Server;
}

const noFigures = (): Figures => ({ ms: { create: [], snapshot: [] }, inVerb: { create: [], snapshot: [] }, cpu: { create: [], snapshot: [] }, calls: { create: [], snapshot: [] } });

async function side(withEndpoint: boolean): Promise<Side> {
  const ctx = await makeSmEnv();
  const xapi = withEndpoint
    ? await XapiStandin.start(xapiSocket(ctx), {
        smSessions: [{ ref: SESSION_SECRET, sr: SR_REF }],
        srs: [{ ref: SR_REF, uuid: ctx.sr }],
        hosts: [{ ref: HOST_REF, uuid: ctx.hostId }],
      })
    : undefined;
  await xml(ctx, 'sr_create', { args: ['0'] });
  await xml(ctx, 'sr_attach');
  return { ctx, ...(xapi ? { xapi } : {}) };
}

/** One vdi_create, then a vdi_snapshot of the new VDI, through the executable; their figures go to `f`. */
async function round(s: Side, f: Figures, label: string): Promise<void> {
  const seen = () => s.xapi?.calls.length ?? 0;
  let before = seen();
  let cpu = process.cpuUsage();
  const { value, ms } = await timed(() => xml(s.ctx, 'vdi_create', { args: createArgs(64 * 1024 * 1024, label), vdi_type: 'user' }));
  f.cpu.create.push(cpuMs(cpu));
  f.ms.create.push(ms);
  f.calls.create.push(seen() - before);
  const vdi = (value as { uuid: string }).uuid;
  before = seen();
  // xapi sends the VDI's ref with every VDI verb (none standalone: there is no database).
  const ref = s.xapi ? [...s.xapi.vdis.entries()].find(([, v]) => v.uuid === vdi)?.[0] : undefined;
  cpu = process.cpuUsage();
  f.ms.snapshot.push((await timed(() => xml(s.ctx, 'vdi_snapshot', { vdi_uuid: vdi, vdi_location: vdi, ...(ref ? { vdi_ref: ref } : {}) }))).ms);
  f.cpu.snapshot.push(cpuMs(cpu));
  f.calls.snapshot.push(seen() - before);
}

/** SMlog's `done in` times of the verbs logged since `from` (a byte offset), in their order. */
function verbTimes(s: Side, from: number, f: Figures): void {
  const text = readFileSync(s.ctx.smlog).subarray(from).toString('utf8');
  for (const [, verb, ms] of text.matchAll(/\] vdi_(create|snapshot) done in (\d+) ms/g)) f.inVerb[verb as Verb].push(Number(ms));
}

/** The verbs the resident server answered (SMlog names its pid on each). */
function answeredBy(s: Side): number {
  const pid = s.resident?.pid;
  if (pid === undefined) return 0;
  return [...readFileSync(s.ctx.smlog, 'utf8').matchAll(new RegExp(`\\[${pid}\\] vdi_(create|snapshot) done`, 'g'))].length;
}

/** ROUNDS rounds alternating the two sides (which goes first alternates too); their figures, side by side. */
async function measure(sides: readonly [Side, Side], label: string): Promise<[Figures, Figures]> {
  const f: [Figures, Figures] = [noFigures(), noFigures()];
  const logged = sides.map((s) => statSync(s.ctx.smlog).size);
  for (let i = 0; i < ROUNDS; i++) {
    for (const k of i % 2 === 0 ? [0, 1] : [1, 0]) await round(sides[k]!, f[k]!, `${label}${i}`);
  }
  sides.forEach((s, k) => verbTimes(s, logged[k]!, f[k]!));
  return f;
}

function rows(mode: string, standalone: Figures, inStep: Figures): Array<[string, string]> {
  const p50 = (xs: number[]) => percentile(xs, 50);
  const out: Array<[string, string]> = [];
  for (const verb of ['create', 'snapshot'] as const) {
    const a = p50(standalone.ms[verb]);
    const b = p50(inStep.ms[verb]);
    out.push([`${mode}: vdi_${verb} p50: standalone / with the endpoint / added`, `${a.toFixed(1)} / ${b.toFixed(1)} ms / ${(b - a).toFixed(1)} ms (ratio ${(b / a).toFixed(2)}; goal added <= 20 ms)`]);
  }
  // Each round's two calls ran back to back: the median of their differences moves less with the machine's load than the difference of the medians.
  for (const verb of ['create', 'snapshot'] as const) {
    out.push([`${mode}: vdi_${verb}: median of the rounds' added time`, `${p50(inStep.ms[verb].map((ms, i) => ms - standalone.ms[verb][i]!)).toFixed(1)} ms`]);
  }
  for (const verb of ['create', 'snapshot'] as const) {
    const a = p50(standalone.inVerb[verb]);
    const b = p50(inStep.inVerb[verb]);
    out.push([`${mode}: vdi_${verb} in the verb (SMlog's "done in", ${inStep.inVerb[verb].length} calls) p50: standalone / endpoint / added`, `${a} / ${b} ms / ${b - a} ms`]);
  }
  // The stand-in runs in this process, so the added time above includes its serving: this is its share in CPU time, which the machine's load does not stretch.
  for (const verb of ['create', 'snapshot'] as const) {
    const a = p50(standalone.cpu[verb]);
    const b = p50(inStep.cpu[verb]);
    out.push([`${mode}: vdi_${verb}: CPU of the bench process (spawn, pipes; the stand-in)`, `${a.toFixed(1)} / ${b.toFixed(1)} ms: the stand-in's ${(b - a).toFixed(1)} ms is in the added time`]);
  }
  return out;
}

export async function runXapiBenchmarks(): Promise<void> {
  const sides: [Side, Side] = [await side(false), await side(true)];
  try {
    const [pa, pb] = await measure(sides, 'p');
    for (const s of sides) s.resident = await startServer(s.ctx, s.ctx.env, residentSocket(s.ctx));
    const [ra, rb] = await measure(sides, 'r');
    report(`XenAPI callbacks, one process per call, ${ROUNDS} alternating rounds per mode (the stand-in xapi serves from this process)`, [
      ...rows('no resident server', pa, pb),
      ...rows('resident server running', ra, rb),
      ['resident server running: verbs the resident servers answered', `${answeredBy(sides[0]) + answeredBy(sides[1])} of ${4 * ROUNDS}`],
      ['XenAPI calls per vdi_create / vdi_snapshot', `${percentile(pb.calls.create, 50)} / ${percentile(pb.calls.snapshot, 50)} (resident: ${percentile(rb.calls.create, 50)} / ${percentile(rb.calls.snapshot, 50)})`],
    ]);
  } finally {
    for (const s of sides) {
      await s.resident?.stop();
      await s.xapi?.close();
      await s.ctx.cleanup();
    }
  }
}
