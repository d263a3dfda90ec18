/**
 * What one datapath process does: serves VDIs (a VHD chain behind a
 * PausableDevice, one NbdServer each) and pauses, unpauses and stops them on
 * request. Every path comes with the request; nothing here knows SRs.
 *
 * Each VDI's server listens on a short socket in the datapath's own run
 * directory and the requested socket path is a link to it, as the established
 * SM links tapdisk's sockets: a unix socket address holds at most 107 bytes,
 * and `<root>/run/blktap-control/nbd/<sr>/<vdi>` can be longer than that
 * under a test root (clients connect through the link; the kernel follows it).
 */
import { mkdir, readlink, rename, rm, symlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { NbdServer, PausableDevice, type NbdLogger } from '../nbd/index.js';
import { BLOCK_SIZE } from '../vhd/index.js';
import { describePause, type PauseSteps, type ServedVdi } from './control.js';
import { faultPoint } from '../sr/fault.js';
import { openServedDevice, type ServedDevice } from './cbt-device.js';
import { reuseOpenImages, type ImageReuse } from './chain-reuse.js';
import { DirtyTrackingDevice, type SectorRuns } from './dirty-tracking-device.js';

export interface ServiceLog {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/**
 * How long a GC pause (`durable` false) may wait for a moment when no new block
 * is being written before it holds the clients (see flushBetweenAllocations).
 */
const ALLOCATION_WAIT_MS = Number(process.env.SM_PAUSE_ALLOCATION_WAIT_MS ?? 1000);

interface Served {
  vdi: string;
  path: string;
  socket: string;
  listening: string;
  writable: boolean;
  /** The VDI's CBT log, marked before each write reaches the image (writable only). */
  cbtLog?: string;
  server: NbdServer;
  device: PausableDevice;
  /** What `device` passes requests to now: the chain (behind its CBT log). */
  chain: ServedDevice;
  /** Above the pausable device: records which blocks clients wrote (live leaf-coalesce). */
  written: DirtyTrackingDevice;
  since: string;
  pausedAt?: number;
}

export class DatapathService {
  private readonly served = new Map<string, Served>();
  private next = 0;

  constructor(
    /** Where the listening sockets go (the control socket's directory). */
    private readonly runDir: string,
    private readonly log: ServiceLog,
  ) {}

  get size(): number {
    return this.served.size;
  }

  async serve(vdi: string, path: string, socket: string, writable: boolean, cbtLog?: string): Promise<void> {
    const known = this.served.get(vdi);
    if (known) {
      if (known.path === path && known.writable === writable && known.socket === socket && known.cbtLog === (writable ? cbtLog : undefined)) return; // a repeated activate
      throw new Error(`VDI ${vdi} is already served (${known.writable ? 'rw' : 'ro'} from ${known.path})`);
    }
    const started = Date.now();
    const inner = await openServedDevice(path, writable, cbtLog);
    const device = new PausableDevice(inner);
    const written = new DirtyTrackingDevice(device, BLOCK_SIZE);
    const server = new NbdServer({ logger: this.nbdLogger(vdi) });
    const listening = join(this.runDir, `nbd${process.pid}.${this.next++}`);
    try {
      server.addExport(vdi, written, { description: `VDI ${vdi}` });
      await server.listen(listening);
      await linkAtomically(listening, socket);
    } catch (err) {
      await server.destroy();
      await device.close();
      throw err;
    }
    this.served.set(vdi, { vdi, path, socket, listening, writable, ...(cbtLog && writable ? { cbtLog } : {}), server, device, chain: inner, written, since: new Date().toISOString() });
    this.log.info(`datapath: VDI ${vdi} served ${writable ? 'read-write' : 'read-only'} from ${path}${cbtLog && writable ? ` tracking changes in ${cbtLog}` : ''} on ${socket} (${device.size} bytes, opened in ${Date.now() - started} ms)`);
  }

  /** Connections drained and closed, the image flushed and closed, the link removed. False if it was not served. */
  async stop(vdi: string): Promise<boolean> {
    const s = this.served.get(vdi);
    if (!s) return false;
    this.served.delete(vdi);
    const clients = s.server.connectionCount;
    // Paused, held requests would never drain: those connections are dropped instead.
    if (s.device.paused) await s.server.destroy();
    else await s.server.close();
    await s.device.close();
    await removeLinkTo(s.socket, s.listening);
    this.log.info(`datapath: VDI ${vdi} no longer served (${clients} clients disconnected; image closed)`);
    return true;
  }

  /**
   * Flushes while clients still run (most dirty pages of the leaf are written
   * back before anyone waits), then holds new requests, drains those in
   * flight, flushes again and settles the chain: its files are final on disk,
   * as a close leaves them, and stay open for the unpause to take over.
   * `durable` false: held, nothing is synced unless a block was allocated
   * since the flush before (its BAT entry then needs the fsyncs around it):
   * an fsync's time there is the disk's, and on ext4 it may first wait for
   * other files' data. The files are then final in this host's page cache,
   * which is where the caller reads them; and the flush before the hold
   * comes at a moment no new block is being written, if one comes soon.
   */
  async pause(vdi: string, durable = true): Promise<PauseSteps> {
    const s = this.require(vdi);
    const started = Date.now();
    if (!s.device.paused && s.device.flush) await (durable ? s.device.flush() : this.flushBetweenAllocations(s, started + ALLOCATION_WAIT_MS));
    const flushed = Date.now();
    if (s.pausedAt === undefined) s.pausedAt = flushed;
    await s.device.pause({ flush: durable });
    const drained = Date.now();
    faultPoint('datapath-pause-drained');
    await s.chain.settle({ durable });
    const steps = { flushedBeforeMs: flushed - started, drainedMs: drained - flushed, settledMs: Date.now() - drained, ...(durable ? {} : { durable }) };
    this.log.info(`datapath: VDI ${vdi} paused (${describePause(steps)}; images kept open)`);
    return steps;
  }

  /**
   * The flush before a GC pause, once no new block is being written and with
   * none written during it, if that comes before `deadline`. Held, the pause
   * would wait for every write queued behind an allocation (a leaf a snapshot
   * just made allocates a block at the first write to each: 70-100 ms held seen),
   * then sync each new block's BAT entry; clients still run meanwhile.
   */
  private async flushBetweenAllocations(s: Served, deadline: number): Promise<void> {
    for (;;) {
      await s.chain.allocationsDone(deadline - Date.now());
      await s.device.flush!();
      if (!s.chain.batPending || Date.now() >= deadline) return;
    }
  }

  /**
   * Opens the chain at `path` (the VDI's leaf now), with its CBT log `cbtLog`
   * (a snapshot's new one; absent: tracking disabled), switches to it and
   * releases the held requests; returns how long it was paused. `scrubbed`:
   * the leaf needs no scan for data under clear bits. `reuse`: the paused
   * chain's images that are still in the new chain are taken over, but for
   * the files named in `except` (chain-reuse.ts); absent: all opened again.
   */
  async unpause(vdi: string, path: string, scrubbed = false, cbtLog?: string, reuse?: { except: readonly string[] }): Promise<number> {
    const s = this.require(vdi);
    if (!s.device.paused) return 0;
    await s.device.pause(); // a pause still draining finishes first
    // A pause whose settle failed said so; what it could not write stays unwritten, the handles still go below.
    await s.chain.settle().catch((err: Error) => this.log.warn(`datapath: VDI ${vdi}: unpausing a chain that did not settle: ${err.message}`));
    const started = Date.now();
    const kept: ImageReuse | undefined = reuse ? await reuseOpenImages(s.chain.images, reuse.except) : undefined;
    const next = await openServedDevice(path, s.writable, cbtLog, !scrubbed, kept?.take);
    const grew = next.size > s.device.size ? ` (size ${s.device.size} -> ${next.size} bytes for new connections)` : '';
    try {
      s.device.refresh(next, { grow: true });
    } catch (err) {
      await next.abandon();
      throw err;
    }
    faultPoint('datapath-unpause-refreshed');
    const old = s.chain;
    s.chain = next;
    s.path = path;
    s.cbtLog = s.writable ? cbtLog : undefined;
    s.device.unpause();
    const ms = Date.now() - (s.pausedAt ?? Date.now());
    s.pausedAt = undefined;
    const opened = `${next.images.length - (kept?.taken.size ?? 0)} of ${next.images.length} images opened in ${Date.now() - started} ms`;
    // Clients run again; the paused chain's other handles close meanwhile (nothing is written).
    await old.release(kept?.taken).catch((err: Error) => this.log.warn(`datapath: VDI ${vdi}: closing the images of the chain before the pause: ${err.message}`));
    this.log.info(`datapath: VDI ${vdi} unpaused on ${path} after ${ms} ms paused (${opened}${kept ? ', the rest kept open' : ''})${grew}`);
    return ms;
  }

  /**
   * Starts recording the blocks clients write; every write acknowledged before
   * is made durable first (its block then reaches the on-disk BAT), so a copy
   * of the image started after this misses nothing the record does not name.
   */
  async trackWrites(vdi: string): Promise<{ token: string; blockSize: number }> {
    const s = this.require(vdi);
    const token = s.written.start();
    if (!s.device.paused && s.device.flush) await s.device.flush(); // a paused device was flushed by its pause
    return { token, blockSize: s.written.blockSize };
  }

  /**
   * The sectors written since `trackWrites` or the previous call; recording
   * goes on. Every write named has completed, so its data and bitmap are in
   * the page cache another reader of the file sees; only a block allocated
   * since the last flush is missing from the on-disk BAT the copy reads, and
   * then the leaf is flushed first (a paused device was flushed by its pause).
   * Under a steady load every block is allocated, and the flush, which waits
   * behind the whole file's dirty pages, is skipped, unless `flush` asks for it.
   */
  async writtenSince(vdi: string, token: string, flush = false): Promise<SectorRuns> {
    const s = this.require(vdi);
    const runs = s.written.since(token);
    if (!s.device.paused && s.device.flush && (flush || s.chain.awaitsBat(blocksOf(runs, s.written.blockSize / 512)))) await s.device.flush();
    faultPoint('datapath-dirty-since');
    return runs;
  }

  /** Recording stops. */
  untrackWrites(vdi: string): void {
    this.served.get(vdi)?.written.stop();
  }

  list(): ServedVdi[] {
    return [...this.served.values()].map((s) => ({
      vdi: s.vdi,
      path: s.path,
      socket: s.socket,
      listening: s.listening,
      writable: s.writable,
      ...(s.cbtLog ? { cbtlog: s.cbtLog } : {}),
      paused: s.device.paused,
      ...(s.pausedAt === undefined ? {} : { pausedMs: Date.now() - s.pausedAt }),
      clients: s.server.connectionCount,
      size: s.device.size,
      since: s.since,
    }));
  }

  /** Stops everything (SIGTERM): paused VDIs lose their held requests, the others drain. */
  async stopAll(): Promise<void> {
    await Promise.all([...this.served.keys()].map((vdi) => this.stop(vdi).catch((err: Error) => this.log.error(`datapath: stopping VDI ${vdi}: ${err.message}`))));
  }

  private require(vdi: string): Served {
    const s = this.served.get(vdi);
    if (!s) throw new Error(`VDI ${vdi} is not served here`);
    return s;
  }

  /** Connection opens/closes are routine (debug-level chatter kept out of SMlog); protocol trouble is logged. */
  private nbdLogger(vdi: string): NbdLogger {
    return {
      info: () => {},
      warn: (m) => this.log.warn(`datapath: VDI ${vdi}: ${m}`),
      error: (m) => this.log.error(`datapath: VDI ${vdi}: ${m}`),
    };
  }
}

/** The blocks of `sectorsPerBlock` sectors that runs of sectors touch. */
function* blocksOf(runs: SectorRuns, sectorsPerBlock: number): Generator<number> {
  for (const [first, count] of runs) {
    for (let b = Math.floor(first / sectorsPerBlock); b <= Math.floor((first + count - 1) / sectorsPerBlock); b++) yield b;
  }
}

/** `link` -> `target`, replacing whatever `link` was in one rename. */
async function linkAtomically(target: string, link: string): Promise<void> {
  await mkdir(dirname(link), { recursive: true });
  const tmp = `${link}.tmp-${process.pid}`;
  await rm(tmp, { force: true });
  await symlink(target, tmp);
  await rename(tmp, link);
}

/** Removes `link` only if it still points at `target` (a newer datapath may own it). */
async function removeLinkTo(link: string, target: string): Promise<void> {
  const now = await readlink(link).catch(() => undefined);
  if (now === target) await rm(link, { force: true });
}
