/**
 * open-iscsi's iscsiadm: SendTargets discovery, node records with CHAP, login,
 * logout, sessions and the LUNs (SCSI disks) a session brings.
 * CHAP secrets go only into argv of `iscsiadm -o update` and are masked in
 * every error and log line (see run.ts).
 */
import { readdir, readFile } from 'node:fs/promises';
import { isIPv6 } from 'node:net';
import { ToolError } from './run.js';
import type { ToolResult } from './run.js';
import { tcpProbe } from './net.js';
import { runnerOf } from './tool.js';
import type { ToolContext } from './tool.js';
import { checkArg, checkHost, checkIqn, checkPort, checkSecret } from './validate.js';

export const ISCSI_PORT = 3260;
const DEFAULT_TIMEOUT_MS = 60_000;

export interface Portal {
  address: string;
  port: number;
}

export interface DiscoveredTarget extends Portal {
  tpgt: number;
  iqn: string;
}

export interface Session extends Portal {
  transport: string;
  sid: number;
  tpgt: number;
  iqn: string;
}

export interface Chap {
  username: string;
  password: string;
  /** Mutual CHAP: the target's credentials, checked by the initiator. */
  usernameIn?: string;
  passwordIn?: string;
}

export interface SessionLun {
  lun: number;
  hctl: string;
  /** /dev/sdX, once the kernel has attached the disk. */
  device?: string;
}

/** iscsiadm exit codes (open-iscsi include/iscsi_err.h) worth naming in messages. */
export const ISCSI_ERRORS: Readonly<Record<number, string>> = {
  1: 'generic error',
  2: 'session not found',
  4: 'transport error',
  5: 'login failed',
  6: 'node record database error',
  7: 'invalid argument',
  8: 'connection timed out',
  9: 'internal error (is /run/lock/iscsi there?)',
  10: 'logout failed',
  11: 'PDU timed out (target not reachable?)',
  12: 'transport module not loaded',
  13: 'access denied',
  15: 'session already exists',
  18: 'cannot talk to iscsid',
  19: 'fatal login error (wrong target name or target refused the initiator)',
  20: 'iscsid not running',
  21: 'no records or sessions found',
  24: 'authorization failure (CHAP user or password wrong, or CHAP required)',
  29: 'busy, try again',
};

/** An iscsiadm operation failed; `exitCode` is iscsiadm's, `reason` its meaning. */
export class IscsiError extends Error {
  override readonly name = 'IscsiError';
  constructor(
    readonly operation: string,
    readonly exitCode: number | null,
    readonly reason: string,
    override readonly cause?: ToolError,
  ) {
    super(`iSCSI ${operation} failed: ${reason}${exitCode === null ? '' : ` (iscsiadm exit ${exitCode})`}`);
  }
}

/** "ip:port", with brackets around an IPv6 address, as iscsiadm -p wants it. */
export function formatPortal(address: string, port: number = ISCSI_PORT): string {
  const a = checkHost(address, 'portal address');
  return `${isIPv6(a) ? `[${a}]` : a}:${checkPort(port)}`;
}

async function iscsiadm(args: readonly string[], operation: string, ctx?: ToolContext, secrets: string[] = []): Promise<ToolResult> {
  try {
    return await runnerOf(ctx)('iscsiadm', args, { timeoutMs: ctx?.timeoutMs ?? DEFAULT_TIMEOUT_MS, secrets });
  } catch (e) {
    if (!(e instanceof ToolError)) throw e;
    const known = e.code === null ? undefined : ISCSI_ERRORS[e.code];
    const reason = e.timedOut ? 'iscsiadm timed out' : e.spawnError ? `cannot run iscsiadm (${e.spawnError})` : known ?? lastLine(e.stderr);
    throw new IscsiError(operation, e.code, reason, e);
  }
}

function lastLine(s: string): string {
  return s.trim().split('\n').pop()?.replace(/^iscsiadm:\s*/, '') || 'unknown error';
}

/**
 * SendTargets discovery on one portal. A quick TCP probe first, so a dead
 * portal fails in seconds instead of iscsiadm's retries.
 */
export async function discover(address: string, port: number = ISCSI_PORT, ctx?: ToolContext): Promise<DiscoveredTarget[]> {
  const portal = formatPortal(address, port);
  if (!ctx?.run) await tcpProbe(checkHost(address), port, 5000);
  const { stdout } = await iscsiadm(['-m', 'discovery', '-t', 'sendtargets', '-p', portal], `discovery on ${portal}`, ctx);
  return parseDiscovery(stdout);
}

/** Lines "ip:port,tpgt iqn" (IPv6 as "[ip]:port,tpgt iqn"). */
export function parseDiscovery(text: string): DiscoveredTarget[] {
  const out: DiscoveredTarget[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*(\[[^\]]+\]|[^\s:]+):(\d+),(-?\d+)\s+(\S+)\s*$/.exec(line);
    if (!m) continue;
    out.push({ address: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]), tpgt: Number(m[3]), iqn: m[4]! });
  }
  return out;
}

/** Node-record settings for CHAP (or none). Secrets are passed to runTool to mask. */
export function chapSettings(chap: Chap | undefined): Array<[string, string]> {
  if (!chap) return [['node.session.auth.authmethod', 'None']];
  const s: Array<[string, string]> = [
    ['node.session.auth.authmethod', 'CHAP'],
    ['node.session.auth.username', checkArg('CHAP user', chap.username)],
    ['node.session.auth.password', checkSecret(chap.password, 'CHAP password')],
  ];
  if (chap.usernameIn !== undefined || chap.passwordIn !== undefined) {
    s.push(['node.session.auth.username_in', checkArg('incoming CHAP user', chap.usernameIn)]);
    s.push(['node.session.auth.password_in', checkSecret(chap.passwordIn, 'incoming CHAP password')]);
  }
  return s;
}

/**
 * Logs in to `iqn` at the portal: makes the node record, writes the CHAP
 * settings into it (authmethod None when `chap` is undefined, so nothing left
 * from before applies), then logs in. Already logged in counts as success.
 */
export async function login(iqn: string, address: string, port: number = ISCSI_PORT, chap?: Chap, ctx?: ToolContext): Promise<void> {
  const target = checkIqn(iqn, 'target IQN');
  const portal = formatPortal(address, port);
  const node = ['-m', 'node', '-T', target, '-p', portal];
  const secrets = chap ? [chap.password, chap.passwordIn ?? ''].filter(Boolean) : [];
  const settings = chapSettings(chap);
  // -o new (re)makes the record with iscsid.conf's defaults; one update sets all auth keys
  await iscsiadm([...node, '-o', 'new'], `node record for ${target}`, ctx, secrets);
  await iscsiadm([...node, '-o', 'update', ...settings.flatMap(([k, v]) => ['-n', k, '-v', v])], `auth settings for ${target}`, ctx, secrets);
  try {
    await iscsiadm([...node, '--login'], `login to ${target} at ${portal}`, ctx, secrets);
  } catch (e) {
    if (e instanceof IscsiError && e.exitCode === 15) return; // session exists
    throw e;
  }
}

/** Logs out of `iqn` at the portal; not being logged in counts as success. */
export async function logout(iqn: string, address: string, port: number = ISCSI_PORT, ctx?: ToolContext): Promise<void> {
  const target = checkIqn(iqn, 'target IQN');
  const portal = formatPortal(address, port);
  try {
    await iscsiadm(['-m', 'node', '-T', target, '-p', portal, '--logout'], `logout from ${target} at ${portal}`, ctx);
  } catch (e) {
    if (e instanceof IscsiError && e.exitCode === 21) return; // no session
    throw e;
  }
}

/** Deletes the node record (and the CHAP secret stored in it). Missing is fine. */
export async function deleteNode(iqn: string, address: string, port: number = ISCSI_PORT, ctx?: ToolContext): Promise<void> {
  const target = checkIqn(iqn, 'target IQN');
  const portal = formatPortal(address, port);
  try {
    await iscsiadm(['-m', 'node', '-T', target, '-p', portal, '-o', 'delete'], `deleting node record ${target}`, ctx);
  } catch (e) {
    if (e instanceof IscsiError && e.exitCode === 21) return;
    throw e;
  }
}

/** The active sessions (none: []). */
export async function sessions(ctx?: ToolContext): Promise<Session[]> {
  try {
    return parseSessions((await iscsiadm(['-m', 'session'], 'session listing', ctx)).stdout);
  } catch (e) {
    if (e instanceof IscsiError && e.exitCode === 21) return [];
    throw e;
  }
}

/** Lines "tcp: [SID] ip:port,tpgt iqn (non-flash)". */
export function parseSessions(text: string): Session[] {
  const out: Session[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*(\S+):\s+\[(\d+)\]\s+(\[[^\]]+\]|[^\s:]+):(\d+),(-?\d+)\s+(\S+)/.exec(line);
    if (!m) continue;
    out.push({
      transport: m[1]!,
      sid: Number(m[2]),
      address: m[3]!.replace(/^\[|\]$/g, ''),
      port: Number(m[4]),
      tpgt: Number(m[5]),
      iqn: m[6]!,
    });
  }
  return out;
}

/** The session logged in to `iqn` at the portal, if any. */
export async function findSession(iqn: string, address: string, port: number = ISCSI_PORT, ctx?: ToolContext): Promise<Session | undefined> {
  const a = checkHost(address);
  return (await sessions(ctx)).find((s) => s.iqn === iqn && s.address === a && s.port === port);
}

/** Asks the kernel to rescan a session's LUNs (a LUN added on the target). */
export async function rescanSession(sid: number, ctx?: ToolContext): Promise<void> {
  await iscsiadm(['-m', 'session', '-r', String(checkSid(sid)), '--rescan'], `rescan of session ${sid}`, ctx);
}

function checkSid(sid: number): number {
  if (!Number.isInteger(sid) || sid < 0) throw new IscsiError('session lookup', null, `bad session id ${sid}`);
  return sid;
}

/**
 * The LUNs of a session from sysfs:
 * /sys/class/iscsi_session/sessionN/device/targetH:C:T/H:C:T:L/block/sdX.
 * LUN 0 of a tgt target is its controller and has no block device.
 */
export async function sessionLuns(sid: number, sysRoot = '/sys'): Promise<SessionLun[]> {
  const dev = `${sysRoot}/class/iscsi_session/session${checkSid(sid)}/device`;
  const out: SessionLun[] = [];
  for (const t of await readdir(dev).catch(() => [] as string[])) {
    if (!t.startsWith('target')) continue;
    for (const hctl of await readdir(`${dev}/${t}`).catch(() => [] as string[])) {
      if (!/^\d+:\d+:\d+:\d+$/.test(hctl)) continue;
      const block = await readdir(`${dev}/${t}/${hctl}/block`).catch(() => [] as string[]);
      out.push({ lun: Number(hctl.split(':')[3]), hctl, ...(block[0] ? { device: `/dev/${block[0]}` } : {}) });
    }
  }
  return out.sort((a, b) => a.lun - b.lun);
}

/** The session's target name from sysfs (to check what a session is). */
export async function sessionTargetName(sid: number, sysRoot = '/sys'): Promise<string> {
  return (await readFile(`${sysRoot}/class/iscsi_session/session${checkSid(sid)}/targetname`, 'utf8')).trim();
}

/** udev's link for a LUN: /dev/disk/by-path/ip-<ip>:<port>-iscsi-<iqn>-lun-<n>. */
export function byPathLink(address: string, port: number, iqn: string, lun: number): string {
  const a = checkHost(address);
  return `/dev/disk/by-path/ip-${isIPv6(a) ? `[${a}]` : a}:${checkPort(port)}-iscsi-${checkIqn(iqn)}-lun-${lun}`;
}
