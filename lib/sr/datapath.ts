/**
 * The verbs' side of the datapath (lib/datapath): one sm-datapath process per
 * SR on this host, started by the first activation, reached on its control
 * socket. Every verb runs under the SR lock, so no two of these race; the
 * control socket is still the datapath's own lock against a double start.
 *
 * What says a VDI is served: the link at its NBD socket path. A link the
 * datapath does not list (the process died) is cleaned up by the next verb on
 * that VDI: link and socket removed, a writable image opened once for writing
 * and closed (which repairs what the kill left), and the verb carries on.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readlink, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { controlCall, DatapathUnreachable, describePause, type PauseSteps, type ServedVdi } from '../datapath/control.js';
import { openVhdDevice } from '../datapath/vhd-device.js';
import { getLog } from '../log/index.js';
import { connectNbd, disconnectNbd, freeNbdDevice, kernelNbdMissing, nbdConnected, waitNbdReleased } from '../os/nbd-client.js';
import { SMError } from '../errors/sm-error.js';
import { listVdiStates, readVdiState } from './attach-record.js';
import { installRoot } from './install-root.js';
import { isPoolPaused } from './pool-pause.js';
import { datapathControlPath, nbdSocketPath } from './paths.js';
import type { Repository } from './repository.js';
import { trackedLog } from './cbt-logs.js';

/**
 * The unpause request of a VDI: on its leaf as it is now, with its changed-block log if it has one.
 * `reuse`: the images of the paused chain still in the new one are kept open (lib/datapath/chain-reuse.ts),
 * but for those of `changed` (uuids whose image was written while paused); absent: the chain is opened again.
 */
export async function unpauseRequest(repo: Repository, vdi: string, reuse?: { changed: readonly string[] }) {
  const cbtlog = await trackedLog(repo, vdi);
  return {
    op: 'unpause' as const,
    vdi,
    path: repo.imagePath(vdi),
    ...(cbtlog ? { cbtlog } : {}),
    ...(reuse ? { reuse: { except: reuse.changed.map((u) => repo.imagePath(u)) } } : {}),
  };
}

/** The SMlog words for a pause reply's steps. */
function pauseSteps(steps: PauseSteps | undefined): string {
  if (!steps) return '';
  return ` (${describePause(steps)})`;
}

/** How long a new datapath may take to answer: a loaded host (or an emulated one) can take many seconds to start Node. */
const START_TIMEOUT_MS = 60_000;

/** The bundled datapath (one file: starts faster), else the compiled module. */
function datapathEntry(): string {
  const bundled = join(installRoot(), 'dist', 'bundle', 'sm-datapath.mjs');
  return existsSync(bundled) ? bundled : join(installRoot(), 'dist', 'lib', 'datapath', 'sm-datapath.js');
}

/** `params_nbd` of a VDI, the established form (xapi splits it on `:`). */
export function paramsNbd(sr: string, vdi: string): string {
  return `nbd:unix:${nbdSocketPath(sr, vdi)}:exportname=${vdi}`;
}

/** What the SR's datapath on this host serves; empty when none runs. */
export async function servedHere(sr: string): Promise<ServedVdi[]> {
  try {
    return (await controlCall(datapathControlPath(sr), { op: 'list' }, 10_000)).served ?? [];
  } catch (err) {
    if (err instanceof DatapathUnreachable) return [];
    throw err;
  }
}

async function startDatapath(sr: string): Promise<void> {
  const control = datapathControlPath(sr);
  const child = spawn(process.execPath, [datapathEntry(), '--sr', sr, '--control', control], { detached: true, stdio: 'ignore', env: process.env });
  let exited: string | undefined;
  child.on('error', (err) => {
    exited = err.message;
    getLog().warn(`datapath of SR ${sr} failed to start: ${err.message}`);
  });
  child.on('exit', (code, signal) => (exited = `it exited (${signal ?? `code ${code}`})`));
  child.unref();
  const started = Date.now();
  for (;;) {
    try {
      const { pid } = await controlCall(control, { op: 'list' }, 5_000);
      getLog().info(`datapath of SR ${sr} started (pid ${pid}) in ${Date.now() - started} ms`);
      return;
    } catch (err) {
      // Even when ours exited, polling goes on: another verb's datapath may have won the start and answer soon.
      if (!(err instanceof DatapathUnreachable) || Date.now() - started > START_TIMEOUT_MS) {
        throw new SMError('VDIUnavailable', `the datapath of SR ${sr} did not start: ${(err as Error).message}${exited ? `; ${exited}` : ''}`);
      }
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Serves the VDI (read-only unless `writable`) from `path`, marking `cbtlog` before writes, starting the SR's datapath if none runs. */
export async function serveVdi(sr: string, vdi: string, path: string, writable: boolean, cbtlog?: string): Promise<void> {
  const req = { op: 'serve' as const, vdi, path, socket: nbdSocketPath(sr, vdi), writable, ...(cbtlog ? { cbtlog } : {}) };
  try {
    await controlCall(datapathControlPath(sr), req);
  } catch (err) {
    if (!(err instanceof DatapathUnreachable)) throw new SMError('VDIUnavailable', `VDI ${vdi} cannot be served: ${(err as Error).message}`);
    await startDatapath(sr);
    await controlCall(datapathControlPath(sr), req).catch((e: Error) => {
      throw new SMError('VDIUnavailable', `VDI ${vdi} cannot be served: ${e.message}`);
    });
  }
}

/**
 * Stops serving the VDI (connections closed, image flushed and closed), or
 * cleans up after a datapath that died. Nothing to do when it was not served.
 * Its /dev/nbdN, when connected, is disconnected first, unless `disconnect`
 * is false (an activation that failed before connecting it: the device may be
 * someone else's connection).
 */
export async function stopServing(repo: Repository, sr: string, vdi: string, disconnect = true): Promise<void> {
  const state = await readVdiState(sr, vdi);
  if (disconnect && state?.nbd_device) await disconnectKernelNbd(vdi, state.nbd_device);
  try {
    const r = await controlCall(datapathControlPath(sr), { op: 'stop', vdi });
    if (r.exiting) getLog().info(`datapath of SR ${sr}: serves nothing more, exiting`);
    if (r.wasServed) return;
  } catch (err) {
    if (!(err instanceof DatapathUnreachable)) throw new SMError('VDIUnavailable', `VDI ${vdi}: stopping its datapath failed: ${(err as Error).message}`);
  }
  await cleanUpDead(repo, sr, vdi, state?.writable === true);
}

/**
 * At the start of every verb on a VDI: a VDI left paused by a killed verb is
 * unpaused on its leaf as it is now (journals are already recovered); a VDI
 * whose datapath died is cleaned up. Returns whether it is being served.
 */
export async function settleServing(repo: Repository, sr: string, vdi: string): Promise<boolean> {
  const link = nbdSocketPath(sr, vdi);
  const linked = await readlink(link).catch(() => undefined);
  const served = (await servedHere(sr)).find((s) => s.vdi === vdi);
  // Paused for the pool (the master changes its chain): only the master's unpause releases it.
  if (served?.paused && !(await isPoolPaused(sr, vdi))) {
    const { pausedMs } = await controlCall(datapathControlPath(sr), await unpauseRequest(repo, vdi));
    getLog().info(`VDI ${vdi}: found paused by an interrupted verb; unpaused on ${repo.imagePath(vdi)} after ${pausedMs} ms`);
  }
  if (served) return true;
  if (linked !== undefined) await cleanUpDead(repo, sr, vdi, (await readVdiState(sr, vdi))?.writable === true);
  return false;
}

/** What a dead datapath left of one VDI: its sockets, and (writable) whatever its kill left in the leaf. */
async function cleanUpDead(repo: Repository, sr: string, vdi: string, writable: boolean): Promise<void> {
  const link = nbdSocketPath(sr, vdi);
  const target = await readlink(link).catch(() => undefined);
  if (target === undefined) return;
  // Only a socket of the datapath's own directory goes with the link.
  if (dirname(target) === dirname(datapathControlPath(sr))) await rm(target, { force: true });
  await rm(link, { force: true });
  if (writable && (await repo.backend.hasImage(vdi))) {
    const device = await openVhdDevice(repo.imagePath(vdi), { writable: true });
    await device.close();
  }
  getLog().warn(`VDI ${vdi}: its datapath had died; sockets removed${writable ? ', image repaired and closed' : ''}`);
}

/**
 * Runs `fn` (a change of the VDI's chain) with the VDI's datapath paused and
 * its images settled (final on disk, kept open) when it is served here;
 * always unpauses afterwards, on the VDI's leaf as it is then (the new leaf
 * after a snapshot, the old one after a rollback). Clients see latency, never
 * an error. `fn` changes the leaf only (in place, or renames it to be the new
 * leaf's parent; its footer's hidden flag may change): the images below it are
 * kept open across the pause, and only what is new is opened.
 */
export async function withPausedServing<T>(
  repo: Repository,
  sr: string,
  vdi: string,
  fn: () => Promise<T>,
  /** After a failure of `fn`, before the unpause: settle the chain (recover its journal) so the datapath reopens what stays. */
  onFailure?: () => Promise<unknown>,
): Promise<T> {
  if (!(await settleServing(repo, sr, vdi))) return fn();
  // Paused for the pool already (images settled): the master's unpause opens the chain at the leaf then.
  if (await isPoolPaused(sr, vdi)) return fn();
  const control = datapathControlPath(sr);
  const started = Date.now();
  const { steps } = await controlCall(control, { op: 'pause', vdi }).catch((err: Error) => {
    throw new SMError('VDIInUse', `VDI ${vdi}: its datapath could not pause: ${err.message}`);
  });
  getLog().info(`VDI ${vdi}: datapath paused in ${Date.now() - started} ms${pauseSteps(steps)}`);
  try {
    return await fn();
  } catch (err) {
    await onFailure?.().catch((e: Error) => getLog().warn(`VDI ${vdi}: settling after a failed change: ${e.message}`));
    throw err;
  } finally {
    const { pausedMs } = await controlCall(control, await unpauseRequest(repo, vdi, { changed: [] }));
    getLog().info(`VDI ${vdi}: datapath unpaused on ${repo.imagePath(vdi)}; paused ${pausedMs} ms`);
  }
}

/**
 * The GC's relink: the VDIs of `vdis` served here are paused (images settled)
 * while `fn` rewrites their parent and removes the image they read through,
 * then unpaused on their leaves, which now read through the new parent.
 * Their leaves were settled by the pause (a live leaf-coalesce scrubs the
 * image that becomes the leaf beforehand), so the reopen skips the scrub.
 * `changed`: the images `fn` writes into (relinked children, the parent
 * coalesced into): opened again at the unpause; every other image still in
 * a chain is kept open. `writtenSince`: a write record's token per VDI; `fn`
 * gets what each recorded once paused, with the pause's own reply.
 * `durable` false: `fn` reads the leaves through this host's page cache and
 * syncs what it writes itself, so the pause syncs only what the files would
 * lack (the control request's `durable`).
 * What the unpauses ask is worked out before the pause: `fn` keeps each
 * VDI's leaf path and changed-block log, so nothing else waits paused.
 */
export async function withServedPaused<T>(
  repo: Repository,
  sr: string,
  vdis: readonly string[],
  fn: (written: ReadonlyMap<string, [number, number][]>) => Promise<T>,
  opts: { reason: string; changed?: readonly string[]; writtenSince?: ReadonlyMap<string, string>; durable?: boolean },
): Promise<T> {
  const control = datapathControlPath(sr);
  const served = (await servedHere(sr)).filter((s) => vdis.includes(s.vdi));
  const unpauses = await Promise.all(served.map(async (s) => ({ ...(await unpauseRequest(repo, s.vdi, { changed: opts.changed ?? [] })), scrubbed: true })));
  const paused: typeof unpauses = [];
  const written = new Map<string, [number, number][]>();
  try {
    for (const [i, s] of served.entries()) {
      const token = opts.writtenSince?.get(s.vdi);
      const reply = await controlCall(control, { op: 'pause', vdi: s.vdi, ...(token === undefined ? {} : { token }), ...(opts.durable === false ? { durable: false } : {}) });
      paused.push(unpauses[i]!);
      if (reply.written) written.set(s.vdi, reply.written);
      getLog().info(`VDI ${s.vdi}: datapath paused for ${opts.reason}${pauseSteps(reply.steps)}`);
    }
    return await fn(written);
  } finally {
    for (const request of paused) {
      const { pausedMs } = await controlCall(control, request);
      getLog().info(`VDI ${request.vdi}: datapath unpaused on ${request.path}; paused ${pausedMs} ms`);
    }
  }
}

/** Every VDI a killed verb left paused is unpaused on its leaf as it is now (after journal recovery). */
export async function unpauseLeftovers(repo: Repository, sr: string): Promise<void> {
  for (const s of await servedHere(sr)) {
    if (!s.paused || (await isPoolPaused(sr, s.vdi))) continue;
    const { pausedMs } = await controlCall(datapathControlPath(sr), await unpauseRequest(repo, s.vdi));
    getLog().info(`VDI ${s.vdi}: found paused by an interrupted verb; unpaused on ${repo.imagePath(s.vdi)} after ${pausedMs} ms`);
  }
}

/**
 * The `params` of an attach: with the kernel's nbd module and nbd-client, a
 * free /dev/nbdN (connected at activate); otherwise the NBD socket path, and
 * SMlog says why.
 */
export async function allocateParams(sr: string, vdi: string): Promise<{ params: string; nbdDevice?: string }> {
  const socket = nbdSocketPath(sr, vdi);
  const missing = kernelNbdMissing();
  if (missing) {
    getLog().info(`VDI ${vdi}: no kernel NBD device (${missing}); params is the NBD socket path`);
    return { params: socket };
  }
  const mine = (await readVdiState(sr, vdi))?.nbd_device;
  if (mine) return { params: mine, nbdDevice: mine };
  const taken = new Set((await listVdiStates()).map((s) => s.nbd_device).filter((d): d is string => !!d));
  const dev = freeNbdDevice(taken);
  if (!dev) getLog().warn(`VDI ${vdi}: every /dev/nbdN is connected or attached; params is the NBD socket path`);
  return dev ? { params: dev, nbdDevice: dev } : { params: socket };
}

/**
 * Connects the VDI's /dev/nbdN to its socket (activate), when it has one.
 * `activeBefore`: the VDI was already active (activated again). Its device
 * then stays connected, unless its datapath had died (`servedBefore` false):
 * the kernel's connection went with it, so it is made anew. A device already
 * connected for a VDI that was not active is someone else's: VDIUnavailable,
 * nothing touched. A connect that fails half-way is undone here.
 */
export async function connectKernelNbd(sr: string, vdi: string, device: string | undefined, activeBefore: boolean, servedBefore: boolean): Promise<void> {
  if (!device) return;
  const socket = nbdSocketPath(sr, vdi);
  if (nbdConnected(device)) {
    if (!activeBefore) throw new SMError('VDIUnavailable', `VDI ${vdi}: ${device} is already connected (another user of the host's NBD devices)`);
    if (servedBefore) return;
    await disconnectKernelNbd(vdi, device);
  }
  const started = Date.now();
  try {
    await connectNbd(socket, device, vdi);
  } catch (err) {
    if (nbdConnected(device)) await disconnectKernelNbd(vdi, device);
    throw new SMError('VDIUnavailable', `VDI ${vdi}: connecting ${device} to ${socket} failed: ${(err as Error).message}`);
  }
  getLog().info(`VDI ${vdi}: ${device} connected to ${socket} in ${Date.now() - started} ms`);
}

/**
 * Disconnects the VDI's /dev/nbdN and waits until the kernel has let go of
 * it, so the datapath is stopped only once the kernel sends nothing more and
 * the next attach finds the device free. A device still open (mounted) stays
 * connected until closed: SMlog says so.
 */
async function disconnectKernelNbd(vdi: string, device: string): Promise<void> {
  if (!nbdConnected(device)) return;
  try {
    await disconnectNbd(device);
  } catch (err) {
    getLog().warn(`VDI ${vdi}: nbd-client -disconnect ${device}: ${(err as Error).message}`);
    return;
  }
  if (await waitNbdReleased(device)) getLog().info(`VDI ${vdi}: ${device} disconnected`);
  else getLog().warn(`VDI ${vdi}: ${device} still connected 10 s after nbd-client -disconnect (still open?)`);
}
