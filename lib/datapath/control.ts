/**
 * The datapath's control protocol: one JSON object per line on a unix socket,
 * one reply line per request, in order. The client here is what lib/sr uses;
 * it knows nothing of SRs (every path is an argument).
 */
import net from 'node:net';

export type ControlRequest =
  /** Serve the chain ending at `path` as export `vdi`, on a socket linked at `socket`. */
  | { op: 'serve'; vdi: string; path: string; socket: string; writable: boolean; cbtlog?: string }
  /** Stop serving: connections drained and closed, the image flushed and closed, the link removed. */
  | { op: 'stop'; vdi: string }
  /**
   * Flush, then hold new requests, drain the ones in flight, flush again and settle the image: its files
   * are then final on disk (as a close leaves them) and kept open, never written through again.
   * `token` (of track-start): the reply also carries what dirty-since of it would answer once paused.
   * `durable` false: the caller reads the chain through this host's page cache and syncs what it changes
   * itself (the GC's relink and final step), so while clients wait nothing is synced but what the file
   * would lack otherwise: the BAT entries of blocks allocated since the flush before (DatapathService.pause).
   */
  | { op: 'pause'; vdi: string; token?: string; durable?: boolean }
  /**
   * Open the chain ending at `path` (a snapshot's new leaf), with its CBT log `cbtlog` (absent: none),
   * switch to it, release the held requests.
   * `scrubbed`: the leaf has no data under clear bits (see VhdDeviceOptions.scrub): no scan at the open.
   * `reuse`: images of the paused chain still in the new one (the same files) are taken over, not opened
   * again (lib/datapath/chain-reuse.ts), except the files named in `except` (written into while paused);
   * absent: the whole chain is opened again.
   */
  | { op: 'unpause'; vdi: string; path: string; scrubbed?: boolean; cbtlog?: string; reuse?: { except: string[] } }
  /** Start recording which blocks clients write (durable first: see DatapathService.trackWrites). */
  | { op: 'track-start'; vdi: string }
  /**
   * The sectors written since track-start or the previous dirty-since of that `token`, as [first sector, count] runs.
   * `flush`: the leaf flushed whatever the blocks named (a pause follows, whose own flush then has less to write).
   */
  | { op: 'dirty-since'; vdi: string; token: string; flush?: boolean }
  | { op: 'track-stop'; vdi: string }
  | { op: 'list' };

export interface ServedVdi {
  vdi: string;
  /** The leaf image served. */
  path: string;
  /** The NBD socket (a link to `listening`). */
  socket: string;
  listening: string;
  writable: boolean;
  /** The CBT log marked before each write, when the VDI tracks changes. */
  cbtlog?: string;
  paused: boolean;
  /** Milliseconds paused so far, when paused. */
  pausedMs?: number;
  clients: number;
  size: number;
  since: string;
}

export type ControlReply =
  | {
      ok: true;
      pid: number;
      served?: ServedVdi[];
      pausedMs?: number;
      /** pause: how long each step took (PauseSteps). */
      steps?: PauseSteps;
      wasServed?: boolean;
      exiting?: boolean;
      token?: string;
      blockSize?: number;
      written?: [number, number][];
    }
  | { ok: false; pid: number; error: string };

/** The steps of a pause, in milliseconds. */
export interface PauseSteps {
  /** The flush before anything is held (clients still run meanwhile). */
  flushedBeforeMs: number;
  /** Requests held, those in flight drained, flushed again (not with `durable` false): from here on clients wait. */
  drainedMs: number;
  /** False: a pause with `durable` false, which synced only what the file lacked (see the pause request). */
  durable?: boolean;
  /** The leaf's batmap (and CBT log) made final. */
  settledMs: number;
}

/** A pause's steps as SMlog says them (both sides of the control socket). */
export function describePause(steps: PauseSteps): string {
  const held = steps.durable === false ? 'drained in' : 'drained and flushed in';
  return `flushed beforehand in ${steps.flushedBeforeMs} ms; held: ${held} ${steps.drainedMs} ms, settled in ${steps.settledMs} ms${steps.durable === false ? ', synced only what the file lacked' : ''}`;
}

/** Nobody answers on the control socket (never started, or the process died). */
export class DatapathUnreachable extends Error {
  constructor(
    readonly controlPath: string,
    readonly code: string,
  ) {
    super(`datapath at ${controlPath} unreachable (${code})`);
    this.name = 'DatapathUnreachable';
  }
}

/** The datapath answered with an error. */
export class DatapathError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DatapathError';
  }
}

/**
 * One request, one reply. DatapathUnreachable when nothing listens (or the
 * process died before answering), DatapathError for a refused request.
 */
export function controlCall(controlPath: string, req: ControlRequest, timeoutMs = 120_000): Promise<Extract<ControlReply, { ok: true }>> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(controlPath);
    let buffered = '';
    let connected = false;
    let settled = false;
    const finish = (err: Error | undefined, reply?: Extract<ControlReply, { ok: true }>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(reply!);
    };
    const timer = setTimeout(() => finish(new DatapathError(`${req.op}: no reply from ${controlPath} within ${timeoutMs} ms`)), timeoutMs);
    socket.setEncoding('utf8');
    socket.once('connect', () => {
      connected = true;
      socket.write(JSON.stringify(req) + '\n');
    });
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      const nl = buffered.indexOf('\n');
      if (nl < 0) return;
      let reply: ControlReply;
      try {
        reply = JSON.parse(buffered.slice(0, nl)) as ControlReply;
      } catch {
        finish(new DatapathError(`${req.op}: unparseable reply from ${controlPath}`));
        return;
      }
      if (reply.ok) finish(undefined, reply);
      else finish(new DatapathError(reply.error));
    });
    socket.on('error', (err: NodeJS.ErrnoException) => finish(new DatapathUnreachable(controlPath, err.code ?? err.message)));
    socket.on('close', () => finish(new DatapathUnreachable(controlPath, connected ? 'closed before replying' : 'ENOENT')));
  });
}
