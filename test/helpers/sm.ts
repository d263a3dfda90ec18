// End-to-end helpers: a private SM_ROOT and SR location per test, and the real
// executables (drivers/FileSR, sm-gc, sm, sm-vhd) run as child processes with
// argv arrays, never through a shell.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { callUnixSocket, encodeMethodCall, parseMethodResponse, type MethodResponse } from '../../lib/smapi/index.js';

/** The repository root (this file runs as dist/test/helpers/sm.js). */
export const REPO = fileURLToPath(new URL('../../../', import.meta.url));
export const FILE_SR = path.join(REPO, 'drivers', 'FileSR');
export const SM_VHD = path.join(REPO, 'dist', 'lib', 'vhd', 'cli', 'sm-vhd.js');
export const SM_GC = path.join(REPO, 'dist', 'gc', 'sm-gc.js');
export const SM_CLI = path.join(REPO, 'dist', 'lib', 'cli', 'sm.js');

export const SESSION_SECRET = 'OpaqueRef:session-SECRET-5f1c';

export interface SmEnv {
  /** Holds everything of this test; removed by cleanup(). */
  base: string;
  /** SM_ROOT */
  root: string;
  /** The SR's directory (device_config.location), outside SM_ROOT. */
  location: string;
  sr: string;
  env: NodeJS.ProcessEnv;
  smlog: string;
  /** Path of the attached SR as the drivers see it. */
  mount: string;
  /** This host's INSTALLATION_UUID (in `$SM_ROOT/etc/xensource-inventory`). */
  hostId: string;
  /** Sent as device_config.SRmaster: true for the SR master (and a host on its own). */
  srMaster: boolean;
  /** A fresh scratch file name inside base. */
  scratch(name: string): string;
  cleanup(): Promise<void>;
}

export interface EnvOptions {
  /** Let drivers start the GC by themselves (default: SM_GC=off). */
  gc?: boolean;
  extra?: Record<string, string>;
}

export async function makeSmEnv(opts: EnvOptions = {}): Promise<SmEnv> {
  const base = await mkdtemp(path.join(os.tmpdir(), 'sm-e2e-'));
  const root = path.join(base, 'root');
  const store = path.join(base, 'store');
  fs.mkdirSync(root);
  fs.mkdirSync(store);
  const env: NodeJS.ProcessEnv = { ...process.env, SM_ROOT: root, ORIGINATOR: 'SM', ...opts.extra };
  delete env.SM_FAULT;
  if (opts.gc) delete env.SM_GC;
  else env.SM_GC = 'off';
  const sr = randomUUID();
  let n = 0;
  return {
    base,
    root,
    location: path.join(store, 'sr1'),
    sr,
    env,
    smlog: path.join(root, 'var', 'log', 'SMlog'),
    mount: path.join(root, 'run', 'sr-mount', sr),
    hostId: writeInventory(root),
    srMaster: true,
    scratch: (name) => path.join(base, `${n++}-${name}`),
    cleanup: async () => {
      // The safety net: a datapath a test left running (its SM_ROOT is under base) must not outlive the test.
      const left = datapathPids(base);
      for (const pid of left) process.kill(pid, 'SIGKILL');
      await rm(base, { recursive: true, force: true });
    },
  };
}

/** The sm-datapath processes whose control socket lies under `dir` (a test's base or SM_ROOT). */
export function datapathPids(dir: string): number[] {
  const pids: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const argv = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      if (!argv.some((a) => a.includes('sm-datapath'))) continue;
      const control = argv[argv.indexOf('--control') + 1] ?? '';
      if (control.startsWith(dir + path.sep)) pids.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

/** A host's xensource-inventory with a fresh INSTALLATION_UUID, as the established SM reads it. */
function writeInventory(root: string): string {
  const id = randomUUID();
  fs.mkdirSync(path.join(root, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(root, 'etc', 'xensource-inventory'), `PRODUCT_BRAND='XCP-ng'\nINSTALLATION_UUID='${id}'\n`);
  return id;
}

/**
 * Another host of the same pool: its own SM_ROOT (locks, attach state, SMlog,
 * inventory), the same SR directory and SR uuid; `master` sets SRmaster.
 */
export function poolHost(ctx: SmEnv, name: string, master: boolean): SmEnv {
  const root = path.join(ctx.base, `${name}-root`);
  fs.mkdirSync(root);
  return {
    ...ctx,
    root,
    env: { ...ctx.env, SM_ROOT: root },
    smlog: path.join(root, 'var', 'log', 'SMlog'),
    mount: path.join(root, 'run', 'sr-mount', ctx.sr),
    hostId: writeInventory(root),
    srMaster: master,
  };
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  /** Highest VmHWM (peak RSS, KiB) of the child or any descendant, sampled; set when `measure` was asked for. */
  peakRssKiB?: number;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  input?: string | Buffer;
  timeoutMs?: number;
  /** Sample the peak RSS of the child and its descendants (see peakRssKiB). */
  measure?: boolean;
}

/** VmHWM of a process in KiB (0 once it is gone: a zombie has no memory lines). */
function vmHwmKiB(pid: number): number {
  try {
    return Number(/^VmHWM:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/** A process and its descendants, from /proc/<pid>/task/<tid>/children. */
function processTree(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    try {
      for (const tid of fs.readdirSync(`/proc/${out[i]}/task`)) {
        const kids = fs.readFileSync(`/proc/${out[i]}/task/${tid}/children`, 'utf8').trim();
        if (kids) out.push(...kids.split(/\s+/).map(Number));
      }
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/**
 * Samples the peak RSS of a process tree every few milliseconds until stopped.
 * VmHWM is the kernel's own high-water mark, so only growth in the last
 * interval before exit can be missed.
 */
export function watchPeakRss(pid: number, everyMs = 5): { stop(): number } {
  let peak = 0;
  const sample = () => {
    for (const p of processTree(pid)) peak = Math.max(peak, vmHwmKiB(p));
  };
  sample();
  const timer = setInterval(sample, everyMs);
  return {
    stop() {
      sample();
      clearInterval(timer);
      return peak;
    },
  };
}

/** Runs an executable (argv array), collecting everything; never rejects for a failure of the child. */
export function run(file: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    const rss = opts.measure && child.pid !== undefined ? watchPeakRss(child.pid) : undefined;
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('error', reject);
    child.on('exit', () => rss?.stop());
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const peakRssKiB = rss?.stop();
      resolve({ code, signal, stdout, stderr, ms: Date.now() - started, ...(peakRssKiB === undefined ? {} : { peakRssKiB }) });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}

export const node = (script: string, args: readonly string[], opts: RunOptions = {}) => run(process.execPath, [script, ...args], opts);

/** The request struct a toolstack sends: host_ref, session_ref, command, args, device_config (+ SR fields). */
export function request(ctx: SmEnv, verb: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const { device_config, ...rest } = extra as { device_config?: Record<string, string> };
  return {
    host_ref: 'OpaqueRef:host-1',
    session_ref: SESSION_SECRET,
    command: verb,
    args: [],
    sr_uuid: ctx.sr,
    sr_ref: 'OpaqueRef:sr-1',
    subtask_of: 'DummyRef:|task|' + verb,
    ...rest,
    device_config: { SRmaster: ctx.srMaster === false ? 'false' : 'true', location: ctx.location, ...(device_config ?? {}) },
  };
}

/** vdi_create's positional args, as a toolstack sends them. */
export function createArgs(size: number | string, label = 'disk'): string[] {
  return [String(size), label, 'Created by a test', '', 'false', '19700101T00:00:00Z', '', 'false'];
}

export class SmFault extends Error {
  constructor(
    readonly code: number,
    readonly faultString: string,
  ) {
    super(`SM fault ${code}: ${faultString}`);
  }
}

export interface XmlCallResult extends RunResult {
  response: MethodResponse;
}

export interface CallOptions {
  /**
   * SIGKILL the driver this many ms after it started, unless it has ended: a
   * random-instant crash, or a bound on a call that must not hang (default 120 s).
   */
  killAfterMs?: number;
}

/** One XML-RPC call exactly as a toolstack makes it: `FileSR '<methodCall>'`. */
export async function callDriver(verb: string, params: Record<string, unknown>, env: NodeJS.ProcessEnv, opts: CallOptions = {}): Promise<XmlCallResult> {
  const xml = encodeMethodCall(verb, [params]);
  return callDriverRaw(xml, env, opts);
}

/** `driver`: another driver executable than FileSR; the rest as for run(). */
export async function callDriverRaw(
  xml: string,
  env: NodeJS.ProcessEnv,
  opts: CallOptions & Omit<RunOptions, 'env'> & { driver?: string } = {},
): Promise<XmlCallResult> {
  const { driver = FILE_SR, killAfterMs, ...runOpts } = opts;
  const r = await run(driver, [xml], { env, timeoutMs: killAfterMs, ...runOpts });
  // A driver killed by a signal (SM_FAULT) answers nothing; callers check `signal`.
  if (r.signal !== null && r.stdout === '') return { ...r, response: { kind: 'fault', faultCode: 0, faultString: `no response: killed by ${r.signal}` } };
  let response: MethodResponse;
  try {
    response = parseMethodResponse(r.stdout);
  } catch (err) {
    throw new Error(`not a methodResponse (exit ${r.code}, signal ${r.signal}): ${JSON.stringify(r.stdout)}\nstderr: ${r.stderr}\n${(err as Error).message}`);
  }
  return { ...r, response };
}

/** An XML-RPC call that must succeed (exit 0, no fault): its value. */
export async function xml(ctx: SmEnv, verb: string, extra: Record<string, unknown> = {}): Promise<unknown> {
  const r = await callDriver(verb, request(ctx, verb, extra), ctx.env);
  if (r.code !== 0) throw new Error(`${verb}: exit ${r.code} signal ${r.signal}: ${r.stderr}`);
  if (r.response.kind === 'fault') throw new SmFault(r.response.faultCode, r.response.faultString);
  return r.response.value;
}

export interface JsonRpcResponse {
  jsonrpc: '2.0';
  id: number | string | null;
  result?: unknown;
  error?: { code: number; message: string; data?: { name: string; opterr: string | null } };
}

/** `FileSR --json` with one request or a batch on stdin. */
export async function callJson(
  ctx: SmEnv,
  calls: Array<{ verb: string; extra?: Record<string, unknown> }>,
  env: NodeJS.ProcessEnv = ctx.env,
): Promise<{ responses: JsonRpcResponse[]; run: RunResult }> {
  const batch = calls.map((c, i) => ({ jsonrpc: '2.0', id: i + 1, method: c.verb, params: request(ctx, c.verb, c.extra) }));
  const r = await run(FILE_SR, ['--json'], { env, input: JSON.stringify(batch), measure: true });
  if (r.signal) return { responses: [], run: r };
  const responses = JSON.parse(r.stdout) as JsonRpcResponse[];
  return { responses, run: r };
}

/** The result of a JSON-RPC response, or SmFault. */
export function resultOf(r: JsonRpcResponse): unknown {
  if (r.error) throw new SmFault(r.error.code, `${r.error.message}${r.error.data?.opterr ? ` [opterr=${r.error.data.opterr}]` : ''}`);
  return r.result;
}

export interface Server {
  socket: string;
  pid: number;
  call(verb: string, extra?: Record<string, unknown>): Promise<unknown>;
  /** The SM error code of a call that must fail. */
  fault(verb: string, extra?: Record<string, unknown>): Promise<SmFault>;
  stop(): Promise<void>;
}

function accepts(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(socket);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

/** Where the FileSR executable hands its calls to (lib/smapi/hand-off.ts). */
export const residentSocket = (ctx: SmEnv) => path.join(ctx.root, 'run', 'sm', 'serve', 'FileSR.sock');

/** `FileSR --serve <socket>`: one long-running driver for many calls (`executable`: another build of it). */
export async function startServer(ctx: SmEnv, env: NodeJS.ProcessEnv = ctx.env, socket = ctx.scratch('driver.sock'), executable = FILE_SR): Promise<Server> {
  const child = spawn(executable === FILE_SR ? FILE_SR : process.execPath, [...(executable === FILE_SR ? [] : [executable]), '--serve', socket], {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  // The socket file appears at bind(), a moment before listen(): wait until a connection is accepted.
  const deadline = Date.now() + 20_000;
  while (!(await accepts(socket))) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`driver server did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  const call = async (verb: string, extra: Record<string, unknown> = {}) => {
    const response = (await callUnixSocket(socket, verb, request(ctx, verb, extra))) as JsonRpcResponse;
    return resultOf(response);
  };
  return {
    socket,
    pid: child.pid!,
    call,
    async fault(verb, extra) {
      try {
        await call(verb, extra);
      } catch (err) {
        if (err instanceof SmFault) return err;
        throw err;
      }
      throw new Error(`${verb} succeeded but was expected to fail`);
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
    },
  };
}

/** Runs `fn` with a started server, always stopping it. */
export async function withServer<T>(ctx: SmEnv, fn: (s: Server) => Promise<T>, env?: NodeJS.ProcessEnv): Promise<T> {
  const server = await startServer(ctx, env);
  try {
    return await fn(server);
  } finally {
    await server.stop();
  }
}

/** sr_create + sr_attach through a server. */
export async function createAttachedSr(s: Server): Promise<void> {
  await s.call('sr_create', { args: ['0'], sr_sm_config: { name_label: 'test SR' } });
  await s.call('sr_attach');
}

export interface VdiRef {
  uuid: string;
  location: string;
}

export async function createVdi(s: Server, size: number, label = 'disk'): Promise<string> {
  const r = (await s.call('vdi_create', { args: createArgs(size, label), vdi_type: 'user' })) as VdiRef;
  return r.uuid;
}

export async function snapshot(s: Server, vdi: string, type?: 'single' | 'internal'): Promise<string> {
  const r = (await s.call('vdi_snapshot', { vdi_uuid: vdi, vdi_location: vdi, ...(type ? { driver_params: { type } } : {}) })) as VdiRef;
  return r.uuid;
}

export async function clone(s: Server, vdi: string): Promise<string> {
  return ((await s.call('vdi_clone', { vdi_uuid: vdi, vdi_location: vdi })) as VdiRef).uuid;
}

export async function deleteVdi(s: Server, vdi: string): Promise<void> {
  await s.call('vdi_delete', { vdi_uuid: vdi, vdi_location: vdi });
}

// ---------------------------------------------------------------- other executables

export function smVhd(args: readonly string[], env?: NodeJS.ProcessEnv): Promise<RunResult> {
  return node(SM_VHD, args, { env });
}

export function smGc(ctx: SmEnv, args: readonly string[], env: NodeJS.ProcessEnv = ctx.env, timeoutMs = 180_000): Promise<RunResult> {
  return node(SM_GC, ['-u', ctx.sr, ...args], { env, timeoutMs });
}

/** One foreground collection that must end well. */
export async function gc(ctx: SmEnv): Promise<RunResult> {
  const r = await smGc(ctx, ['-g']);
  if (r.code !== 0) throw new Error(`sm-gc -g exited ${r.code} (${r.signal}): ${r.stderr}\n${tailOfLog(ctx, 30)}`);
  return r;
}

export function smCli(ctx: SmEnv, args: readonly string[]): Promise<RunResult> {
  return node(SM_CLI, args, { env: ctx.env });
}

export function readSmlog(ctx: SmEnv): string {
  try {
    return fs.readFileSync(ctx.smlog, 'utf8');
  } catch {
    return '';
  }
}

export function tailOfLog(ctx: SmEnv, n: number): string {
  return readSmlog(ctx).split('\n').slice(-n - 1).join('\n');
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns a value, or throws after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined> | T | undefined, timeoutMs = 30_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** Runs async jobs with at most `limit` at a time (2 cores here). */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** Waits until every GC a driver started (SMlog `GC for SR .. started (pid N)`) has logged its exit. */
export async function waitForStartedGcs(ctx: SmEnv, timeoutMs = 60_000): Promise<number[]> {
  return waitFor(
    'the GCs the drivers started to end',
    () => {
      const log = readSmlog(ctx);
      const pids = [...log.matchAll(/ GC for SR [0-9a-f-]{36} started \(pid (\d+)\)/g)].map((m) => Number(m[1]));
      const ended = (pid: number) => new RegExp(` SMGC: \\[${pid}\\] (GC process exiting|Another GC instance already active)`).test(log);
      return pids.every(ended) ? pids : undefined;
    },
    timeoutMs,
    100,
  );
}
