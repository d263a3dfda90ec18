// Two hosts of a pool under one toolstack, for the tests of pausing across
// hosts: host A (the SR master) and host B, each its own SM_ROOT and host id
// on the same SR directory; B's datapath is a real sm-datapath serving NBD.
// xapi cannot run here: the stand-in (test/helpers/xapi-standin.ts) answers
// host.call_plugin for B by running B's real plugin executable
// (drivers/tapdisk-pause, with B's SM_ROOT), exactly as xapi's host.call_plugin
// runs /etc/xapi.d/plugins/tapdisk-pause on that host.
import fs from 'node:fs';
import path from 'node:path';
import { encodeMethodCall } from '../../lib/smapi/index.js';
import { createArgs, makeSmEnv, poolHost, REPO, run, SESSION_SECRET, smVhd, xml, type SmEnv } from '../helpers/sm.js';
import { imagePath } from '../helpers/sr-state.js';
import { MiB, pattern } from '../helpers/model.js';
import { openNbd, type NbdVdiClient } from '../helpers/nbd-vdi.js';
import { readTree } from '../helpers/sr-state.js';
import { pluginAnswer, XapiStandin } from '../helpers/xapi-standin.js';
import { HOST_REF, OTHER_HOST_REF, SR_REF, xapiSocket } from './standin-world.js';

export { OTHER_HOST_REF };

const PLUGIN = path.join(REPO, 'drivers', 'tapdisk-pause');
const BLOCK = 64 * 1024;

export interface Pool {
  a: SmEnv;
  b: SmEnv;
  xapi: XapiStandin;
  /** A verb on host B, as xapi sends it there (B's host_ref, SRmaster=false). */
  onB(verb: string, extra?: Record<string, unknown>): Promise<unknown>;
  /** The plugin calls B's executable answered: "fn -> answer". */
  pluginRuns: string[];
  /** Plugin functions B answers with a failure, without running (a host that cannot do it now). */
  refusing: Set<string>;
}

/** xapi's host.call_plugin on host B: B's plugin executable, params [session, args], its `Value` returned. */
async function runPluginOn(b: SmEnv, fn: string, args: Record<string, string>, runs: string[]): Promise<string> {
  const r = await run(PLUGIN, [encodeMethodCall(fn, [SESSION_SECRET, args])], { env: b.env, timeoutMs: 120_000 });
  const answer = pluginAnswer(r.stdout);
  runs.push(`${fn} -> ${answer}`);
  return answer;
}

export async function withPool(fn: (p: Pool) => Promise<void>): Promise<void> {
  const a = await makeSmEnv();
  const b = poolHost(a, 'hostB', false);
  const runs: string[] = [];
  const refusing = new Set<string>();
  const xapi = await XapiStandin.start(xapiSocket(a), {
    smSessions: [{ ref: SESSION_SECRET, sr: SR_REF }],
    srs: [{ ref: SR_REF, uuid: a.sr }],
    hosts: [
      { ref: HOST_REF, uuid: a.hostId },
      { ref: OTHER_HOST_REF, uuid: b.hostId },
    ],
    plugin: (host, plugin, pfn, args) => {
      if (host !== OTHER_HOST_REF || plugin !== 'tapdisk-pause') return `no such host or plugin: ${host} ${plugin}`;
      if (refusing.has(pfn)) {
        runs.push(`${pfn} -> refused`);
        return `failed: host B cannot ${pfn} now`;
      }
      return runPluginOn(b, pfn, args, runs);
    },
  });
  // The same xapi answers on host B's socket (one pool, one database).
  fs.mkdirSync(path.dirname(xapiSocket(b)), { recursive: true });
  fs.symlinkSync(xapiSocket(a), xapiSocket(b));
  const onB = (verb: string, extra: Record<string, unknown> = {}) => xml(b, verb, { host_ref: OTHER_HOST_REF, ...extra });
  try {
    await xml(a, 'sr_create', { args: ['0'] });
    await xml(a, 'sr_attach');
    await onB('sr_attach');
    await fn({ a, b, xapi, onB, pluginRuns: runs, refusing });
  } finally {
    await xapi.close();
    await a.cleanup();
  }
}

export const vdiArgs = (vdi: string, args: string[] = []) => ({ vdi_uuid: vdi, vdi_location: vdi, args });

export async function activeOnB(p: Pool, vdi: string): Promise<void> {
  await p.onB('vdi_attach', vdiArgs(vdi, ['true']));
  await p.onB('vdi_activate', vdiArgs(vdi, ['true']));
  assertTaggedOnB(p, vdi);
}

function assertTaggedOnB(p: Pool, vdi: string): void {
  const sm = p.xapi.vdiByUuid(vdi)!.sm_config as Record<string, string>;
  if (sm[`host_${OTHER_HOST_REF}`] !== 'RW') throw new Error(`B's activation did not tag the VDI: ${JSON.stringify(sm)}`);
}

export async function exportRaw(ctx: SmEnv, uuid: string): Promise<Buffer> {
  const out = ctx.scratch(`${uuid}.raw`);
  const r = await smVhd(['export', '-n', imagePath(ctx, uuid), '-o', out], ctx.env);
  if (r.code !== 0) throw new Error(`sm-vhd export ${uuid}: ${r.stderr}`);
  return fs.readFileSync(out);
}

/** A VDI made on A (the master), its uuid. */
export async function createOnA(p: Pool, size: number): Promise<string> {
  return ((await xml(p.a, 'vdi_create', { args: createArgs(size) })) as { uuid: string }).uuid;
}

/**
 * The chain the GC works on across hosts: B writes 1 MiB at 0 through `c`,
 * A snapshots, B writes 1 MiB at 2 MiB, A snapshots again, B writes 1 MiB at
 * 4 MiB (patterns 1, 2, 3), and A deletes both snapshots: V over b2 over b1,
 * each level holding one of the writes, b2 to coalesce (V relinked), then V.
 */
export async function twoDeletedSnapshots(p: Pool, c: NbdVdiClient, V: string): Promise<void> {
  const snapshots: string[] = [];
  for (const [i, at] of [0, 2 * MiB].entries()) {
    await c.write(at, pattern(i + 1, MiB));
    snapshots.push(((await xml(p.a, 'vdi_snapshot', vdiArgs(V))) as { uuid: string }).uuid);
  }
  await c.write(4 * MiB, pattern(3, MiB));
  for (const S of snapshots) await xml(p.a, 'vdi_delete', vdiArgs(S));
}

/** A VDI B writes, over the chain twoDeletedSnapshots leaves: V over b2 over b1, with B's connection to it. */
export async function chainOnB(p: Pool, size: number): Promise<{ V: string; c: NbdVdiClient; b1: string; b2: string }> {
  const V = await createOnA(p, size);
  await activeOnB(p, V);
  const c = await openNbd(p.b, V);
  await twoDeletedSnapshots(p, c, V);
  const tree = await readTree(p.a);
  const b2 = tree.get(V)!.parent!;
  return { V, c, b2, b1: tree.get(b2)!.parent! };
}

/** The image files a process holds open in `dir`, as /proc shows them (" (deleted)" when removed). */
export function openImages(pid: number, dir: string): string[] {
  return fs
    .readdirSync(`/proc/${pid}/fd`)
    .map((fd) => {
      try {
        return fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        return '';
      }
    })
    .filter((target) => target.startsWith(dir) && /\.vhd( \(deleted\))?$/.test(target));
}

