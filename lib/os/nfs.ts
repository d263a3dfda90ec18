/**
 * NFS client side: mount/umount an export with the SM's options, list a
 * server's exports (showmount) and RPC programs (rpcinfo), and check that the
 * server answers before anything that could hang on it.
 */
import { readFile } from 'node:fs/promises';
import { isIPv6 } from 'node:net';
import { ToolError } from './run.js';
import { tcpProbe, UnreachableError } from './net.js';
import { runnerOf } from './tool.js';
import type { ToolContext } from './tool.js';
import { checkAbsPath, checkHost, InvalidArgumentError } from './validate.js';

export const NFS_PORT = 2049;
/** nfsversion values accepted (device_config.nfsversion). */
export const NFS_VERSIONS = ['3', '4', '4.0', '4.1', '4.2'] as const;
export type NfsVersion = (typeof NFS_VERSIONS)[number];
/** The options every SR mount gets (soft: I/O errors instead of hanging tapdisk forever). */
export const BASE_MOUNT_OPTIONS = ['soft', 'proto=tcp', 'acdirmin=0', 'acdirmax=0', 'timeo=200', 'retrans=4'];
// options the SM sets itself and a user's `options` must not override
const RESERVED_OPTIONS = new Set(['vers', 'nfsvers', 'proto', 'soft', 'hard']);

export interface NfsMount {
  server: string;
  /** Exported path on the server (absolute). */
  path: string;
  mountpoint: string;
  /** Default "3". */
  version?: string;
  /** Extra mount options, comma separated (device_config.options). */
  options?: string;
}

export interface NfsExport {
  path: string;
  /** Clients allowed, as the server lists them ("*", "10.0.0.0/8", host names). */
  accesslist: string[];
}

export interface RpcProgram {
  program: number;
  version: number;
  proto: string;
  port: number;
  service: string;
}

/** An NFS operation failed; `kind` says how, for mapping to SM error codes. */
export class NfsError extends Error {
  override readonly name = 'NfsError';
  constructor(
    readonly kind: 'version' | 'unreachable' | 'mount' | 'umount' | 'exports',
    message: string,
    override readonly cause?: Error,
  ) {
    super(message);
  }
}

export function checkNfsVersion(v: unknown): NfsVersion {
  if (v === undefined || v === '') return '3';
  const s = String(v);
  if ((NFS_VERSIONS as readonly string[]).includes(s)) return s as NfsVersion;
  throw new NfsError('version', `unsupported NFS version ${JSON.stringify(s)} (supported: ${NFS_VERSIONS.join(', ')})`);
}

/** Validated extra options: name or name=value tokens, none overriding the SM's own. */
export function checkMountOptions(options: string | undefined): string[] {
  if (options === undefined || options.trim() === '') return [];
  const out: string[] = [];
  for (const raw of options.split(',')) {
    const opt = raw.trim();
    if (opt === '') continue;
    if (!/^[A-Za-z][A-Za-z0-9_]*(=[A-Za-z0-9_.:/@+-]+)?$/.test(opt)) {
      throw new InvalidArgumentError('NFS mount option', 'must be name or name=value (letters, digits, _.:/@+-)', opt);
    }
    if (RESERVED_OPTIONS.has(opt.split('=')[0]!.toLowerCase())) {
      throw new InvalidArgumentError('NFS mount option', 'is set by the SR (nfsversion) and cannot be overridden', opt);
    }
    out.push(opt);
  }
  return out;
}

/** "server:/path", brackets around an IPv6 address. */
export function nfsSource(server: string, path: string): string {
  const s = checkHost(server, 'NFS server');
  return `${isIPv6(s) ? `[${s}]` : s}:${checkAbsPath(path, 'NFS export path')}`;
}

/** argv of mount(8) for an SR mount. */
export function mountArgs(m: NfsMount): string[] {
  const version = checkNfsVersion(m.version);
  const opts = [...BASE_MOUNT_OPTIONS.slice(0, 2), `vers=${version}`, ...BASE_MOUNT_OPTIONS.slice(2), ...checkMountOptions(m.options)];
  return ['-t', 'nfs', '-o', opts.join(','), nfsSource(m.server, m.path), checkAbsPath(m.mountpoint, 'mount point')];
}

/** Fails fast with NfsError('unreachable') when nothing answers on the NFS port. */
export async function checkServer(server: string, timeoutMs = 5000): Promise<void> {
  try {
    await tcpProbe(checkHost(server, 'NFS server'), NFS_PORT, timeoutMs);
  } catch (e) {
    if (e instanceof UnreachableError) throw new NfsError('unreachable', `NFS server ${e.host} is not reachable on TCP port ${NFS_PORT}: ${e.reason}`, e);
    throw e;
  }
}

/** Mounts an export (the mount point must exist). Checks the server first. */
export async function mountNfs(m: NfsMount, ctx?: ToolContext & { probeTimeoutMs?: number }): Promise<void> {
  const args = mountArgs(m);
  if (!ctx?.run) await checkServer(m.server, ctx?.probeTimeoutMs);
  try {
    await runnerOf(ctx)('mount', args, { timeoutMs: ctx?.timeoutMs ?? 120_000 });
  } catch (e) {
    if (!(e instanceof ToolError)) throw e;
    const why = e.timedOut ? 'mount timed out' : lastLine(e.stderr) || e.message;
    throw new NfsError('mount', `mounting ${args[4]} on ${args[5]} failed: ${why}`, e);
  }
}

/** Unmounts; `lazy` detaches now and cleans up when the last user goes. */
export async function umountNfs(mountpoint: string, opts: { force?: boolean; lazy?: boolean } = {}, ctx?: ToolContext): Promise<void> {
  const args: string[] = [];
  if (opts.force) args.push('-f');
  if (opts.lazy) args.push('-l');
  args.push(checkAbsPath(mountpoint, 'mount point'));
  try {
    await runnerOf(ctx)('umount', args, { timeoutMs: ctx?.timeoutMs ?? 60_000 });
  } catch (e) {
    if (!(e instanceof ToolError)) throw e;
    throw new NfsError('umount', `unmounting ${mountpoint} failed: ${lastLine(e.stderr) || e.message}`, e);
  }
}

/** Whether `mountpoint` has an NFS mount on it (per /proc/mounts). */
export async function isNfsMounted(mountpoint: string, procMounts = '/proc/mounts'): Promise<boolean> {
  const text = await readFile(procMounts, 'utf8');
  return parseProcMounts(text).some((e) => e.mountpoint === mountpoint && /^nfs4?$/.test(e.fstype));
}

export function parseProcMounts(text: string): Array<{ source: string; mountpoint: string; fstype: string; options: string[] }> {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' '))
    .filter((f) => f.length >= 4)
    .map((f) => ({ source: unescape(f[0]!), mountpoint: unescape(f[1]!), fstype: f[2]!, options: f[3]!.split(',') }));
}

/**
 * `showmount -e server`: the exports (for sr_probe). Needs the server's mountd,
 * reached through rpcbind: an NFSv4-only server has neither, and the way to
 * list its exports is to mount its v4 pseudo root (`server:/`) and read it.
 */
export async function showmount(server: string, ctx?: ToolContext): Promise<NfsExport[]> {
  const s = checkHost(server, 'NFS server');
  try {
    return parseShowmount((await runnerOf(ctx)('showmount', ['-e', s], { timeoutMs: ctx?.timeoutMs ?? 30_000 })).stdout);
  } catch (e) {
    if (!(e instanceof ToolError)) throw e;
    throw new NfsError('exports', `listing the exports of ${s} failed: ${e.timedOut ? 'timed out' : lastLine(e.stderr) || e.message}`, e);
  }
}

/** "Export list for H:" then "path client,client" lines. */
export function parseShowmount(text: string): NfsExport[] {
  const out: NfsExport[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '' || /^Export list for /.test(line)) continue;
    const m = /^(\S+)\s*(.*)$/.exec(line.trim());
    if (!m) continue;
    out.push({ path: m[1]!, accesslist: m[2]!.split(',').map((c) => c.trim()).filter(Boolean) });
  }
  return out;
}

/** `rpcinfo -p server`: the RPC programs registered with the server's rpcbind. */
export async function rpcinfo(server: string, ctx?: ToolContext): Promise<RpcProgram[]> {
  const s = checkHost(server, 'NFS server');
  try {
    return parseRpcinfo((await runnerOf(ctx)('rpcinfo', ['-p', s], { timeoutMs: ctx?.timeoutMs ?? 30_000 })).stdout);
  } catch (e) {
    if (!(e instanceof ToolError)) throw e;
    throw new NfsError('unreachable', `rpcinfo on ${s} failed: ${e.timedOut ? 'timed out' : lastLine(e.stderr) || e.message}`, e);
  }
}

export function parseRpcinfo(text: string): RpcProgram[] {
  const out: RpcProgram[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*(\d+)\s+(\d+)\s+(\S+)\s+(\d+)\s*(\S*)/.exec(line);
    if (!m) continue;
    out.push({ program: Number(m[1]), version: Number(m[2]), proto: m[3]!, port: Number(m[4]), service: m[5]! });
  }
  return out;
}

/** NFS versions (program 100003) a server's rpcbind lists over TCP, e.g. [3, 4]. */
export function nfsVersionsOffered(programs: readonly RpcProgram[]): number[] {
  const v = new Set(programs.filter((p) => p.program === 100003 && p.proto === 'tcp').map((p) => p.version));
  return [...v].sort((a, b) => a - b);
}

function lastLine(s: string): string {
  return s.trim().split('\n').pop()?.trim() ?? '';
}
