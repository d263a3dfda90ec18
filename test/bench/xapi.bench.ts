/**
 * What keeping the toolstack's database in step costs a verb: vdi_create and
 * vdi_snapshot through the FileSR executable, one process per call as xapi
 * runs it, on an SR with the stand-in xapi listening at its socket
 * (test/helpers/xapi-standin.ts: xapi itself cannot run here) and on an SR
 * without one (standalone), alternating call by call in the same run.
 */
import { createArgs, makeSmEnv, SESSION_SECRET, xml, type SmEnv } from '../helpers/sm.js';
import { XapiStandin } from '../helpers/xapi-standin.js';
import { HOST_REF, SR_REF, xapiSocket } from '../xapi/standin-world.js';
import { percentile, report, timed } from './measure.js';

const ROUNDS = Number(process.env.BENCH_XAPI_ROUNDS ?? 12);

/** This process's CPU time since `from`, in ms. */
function cpuMs(from: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(from);
  return (d.user + d.system) / 1000;
}

interface Side {
  name: string;
  ctx: SmEnv;
  create: number[];
  snapshot: number[];
  /** CPU time of this process during each call: the spawn and pipes, and with the endpoint the stand-in serving the calls. */
  cpu: { create: number[]; snapshot: number[] };
  /** XenAPI calls the stand-in received during each verb (with the endpoint only). */
  calls: { create: number[]; snapshot: number[] };
  xapi?: XapiStandin;
}

async function side(name: string, withEndpoint: boolean): Promise<{ s: Side; close: () => Promise<void> }> {
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
  return {
    s: { name, ctx, create: [], snapshot: [], cpu: { create: [], snapshot: [] }, calls: { create: [], snapshot: [] }, ...(xapi ? { xapi } : {}) },
    close: async () => {
      await xapi?.close();
      await ctx.cleanup();
    },
  };
}

export async function runXapiBenchmarks(): Promise<void> {
  const standalone = await side('standalone', false);
  const inStep = await side('stand-in xapi', true);
  try {
    const sides = [standalone.s, inStep.s];
    for (let i = 0; i < ROUNDS; i++) {
      for (const s of i % 2 === 0 ? sides : [...sides].reverse()) {
        const seen = () => s.xapi?.calls.length ?? 0;
        let before = seen();
        let cpu = process.cpuUsage();
        const { value, ms } = await timed(() => xml(s.ctx, 'vdi_create', { args: createArgs(64 * 1024 * 1024, `disk${i}`), vdi_type: 'user' }));
        s.cpu.create.push(cpuMs(cpu));
        s.create.push(ms);
        s.calls.create.push(seen() - before);
        const vdi = (value as { uuid: string }).uuid;
        before = seen();
        // xapi sends the VDI's ref with every VDI verb (none standalone: there is no database).
        const ref = s.xapi ? [...s.xapi.vdis.entries()].find(([, v]) => v.uuid === vdi)?.[0] : undefined;
        cpu = process.cpuUsage();
        s.snapshot.push((await timed(() => xml(s.ctx, 'vdi_snapshot', { vdi_uuid: vdi, vdi_location: vdi, ...(ref ? { vdi_ref: ref } : {}) }))).ms);
        s.cpu.snapshot.push(cpuMs(cpu));
        s.calls.snapshot.push(seen() - before);
      }
    }
    const p50 = (xs: number[]) => percentile(xs, 50);
    const row = (verb: 'create' | 'snapshot'): [string, string] => {
      const a = p50(standalone.s[verb]);
      const b = p50(inStep.s[verb]);
      return [`vdi_${verb} p50: standalone / with the endpoint / added`, `${a.toFixed(1)} / ${b.toFixed(1)} ms / ${(b - a).toFixed(1)} ms (ratio ${(b / a).toFixed(2)}; goal added <= 20 ms)`];
    };
    // Each round's two calls ran back to back: the median of their differences moves less with the machine's load than the difference of the medians.
    const paired = (verb: 'create' | 'snapshot'): [string, string] => [
      `vdi_${verb}: median of the rounds' added time`,
      `${p50(inStep.s[verb].map((ms, i) => ms - standalone.s[verb][i]!)).toFixed(1)} ms`,
    ];
    const calls = (verb: 'create' | 'snapshot'): [string, string] => [`XenAPI calls per vdi_${verb}`, String(p50(inStep.s.calls[verb]))];
    // The stand-in runs in this process, so the added time above includes its serving: this is its share in CPU time, which the machine's load does not stretch.
    const standinCpu = (verb: 'create' | 'snapshot'): [string, string] => {
      const a = p50(standalone.s.cpu[verb]);
      const b = p50(inStep.s.cpu[verb]);
      return [`vdi_${verb}: CPU of the bench process (spawn, pipes; the stand-in)`, `${a.toFixed(1)} / ${b.toFixed(1)} ms: the stand-in's ${(b - a).toFixed(1)} ms is in the added time`];
    };
    report(`XenAPI callbacks, one process per call, ${ROUNDS} alternating rounds (the stand-in xapi serves from this process)`, [
      row('create'),
      row('snapshot'),
      paired('create'),
      paired('snapshot'),
      standinCpu('create'),
      standinCpu('snapshot'),
      calls('create'),
      calls('snapshot'),
    ]);
  } finally {
    await standalone.close();
    await inStep.close();
  }
}
