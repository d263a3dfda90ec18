/**
 * The first VM's side of a two-guest run: drives the peer agent (peer-agent.ts)
 * in the second VM, a second host of a pool with a kernel of its own.
 * run-tier.sh boots that VM for the suites in its PEER_SUITES and passes its
 * agent's address as env PEER (ADDRESS:PORT).
 */
import { request } from 'node:http';
import { connect, createServer } from 'node:net';
import type { Socket } from 'node:net';
import { maskText } from '../../../lib/os/run.js';
import { pipeBothWays, showArgv } from './peer-protocol.js';
import type { PeerRunRequest, PeerRunResult } from './peer-protocol.js';

/** Whether this run has a second VM (run-tier.sh sets PEER for the suites that need one). */
export function peerConfigured(): boolean {
  return (process.env.PEER ?? '') !== '';
}

/** The agent refused or failed a request (HTTP 4xx/5xx), e.g. a program that does not exist. */
export class PeerError extends Error {
  override readonly name = 'PeerError';
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export type RunOptions = Omit<PeerRunRequest, 'argv'>;

interface Reply {
  status: number;
  body: Record<string, unknown>;
  /** This VM's address on the link to the peer (the local end of the connection). */
  localAddress: string;
}

/** Time for one request, a command included, before the link is taken as dead. */
const REQUEST_SLACK_MS = 60_000;

export class Peer {
  private constructor(
    readonly host: string,
    readonly port: number,
    /** This VM's address as the peer sees it: where the peer reaches servers of this VM. */
    readonly localAddress: string,
    /** The peer VM's /proc/sys/kernel/random/boot_id. */
    readonly bootId: string,
    readonly hostname: string,
  ) {}

  /**
   * Reaches the agent named by env PEER (or `address`), retrying until it answers:
   * the peer VM boots alongside this one and may not be up yet.
   */
  static async connect(opts: { timeoutMs?: number; address?: string } = {}): Promise<Peer> {
    const address = opts.address ?? process.env.PEER ?? '';
    const m = /^([^:]+):(\d+)$/.exec(address);
    if (!m) throw new Error(`no peer VM: env PEER is '${address}', not ADDRESS:PORT (run-tier.sh sets it for PEER_SUITES)`);
    const host = m[1]!;
    const port = Number(m[2]);
    const end = Date.now() + (opts.timeoutMs ?? 180_000);
    for (;;) {
      try {
        const r = await call(host, port, 'GET', '/ping', undefined, 5_000);
        return new Peer(host, port, r.localAddress, String(r.body.bootId), String(r.body.hostname));
      } catch (e) {
        if (Date.now() > end) throw new Error(`the peer agent at ${address} did not answer: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  /** Runs argv on the peer (no shell); any exit code is a result. */
  async run(argv: string[], opts: RunOptions = {}): Promise<PeerRunResult> {
    const r = await call(this.host, this.port, 'POST', '/run', { argv, ...opts }, (opts.timeoutMs ?? 10 * 60_000) + REQUEST_SLACK_MS);
    return r.body as unknown as PeerRunResult;
  }

  /** Runs argv on the peer; a non-zero exit or a signal throws with its stderr. */
  async runOk(argv: string[], opts: RunOptions = {}): Promise<PeerRunResult> {
    const r = await this.run(argv, opts);
    if (r.code !== 0) {
      const what = r.signal ? `was killed by ${r.signal}` : `exited with code ${r.code}`;
      throw new Error(`on the peer, ${showArgv(argv, opts.secrets)} ${what}: ${maskText(r.stderr.trim(), opts.secrets)}`);
    }
    return r;
  }

  /**
   * A unix socket at `unixPathOnPeer` on the peer whose connections reach TCP
   * `portHere` on this VM: the peer's programs reach a server that listens only
   * here (pair it with serveTcpToUnix for a unix-socket server).
   */
  async relayToHere(unixPathOnPeer: string, portHere: number): Promise<string> {
    const r = await call(this.host, this.port, 'POST', '/relay', { unixPath: unixPathOnPeer, host: this.localAddress, port: portHere }, REQUEST_SLACK_MS);
    return String(r.body.unixPath);
  }

  /** Tells the agent to exit; its VM then powers off. */
  async stop(): Promise<void> {
    await call(this.host, this.port, 'POST', '/stop', {}, REQUEST_SLACK_MS);
  }
}

export interface TcpToUnix {
  port: number;
  close(): Promise<void>;
}

/**
 * A TCP listener (all of this VM's addresses; `port` 0 picks one) that pipes
 * each connection to the local unix socket `unixPath`, so the peer reaches a
 * unix-socket server of this VM.
 */
export async function serveTcpToUnix(port: number, unixPath: string): Promise<TcpToUnix> {
  const sockets = new Set<Socket>();
  const server = createServer((c) => {
    const toUnix = connect(unixPath);
    for (const s of [c, toUnix]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    }
    pipeBothWays(c, toUnix);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '0.0.0.0', () => resolve());
  });
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** One JSON request to the agent; a 4xx/5xx answer throws PeerError with the agent's message. */
function call(host: string, port: number, method: string, path: string, body: unknown, timeoutMs: number): Promise<Reply> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host,
        port,
        method,
        path,
        timeout: timeoutMs,
        agent: false,
        headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
      },
      (res) => {
        const localAddress = res.socket.localAddress ?? '';
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          let parsed: Record<string, unknown>;
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
          } catch {
            return reject(new PeerError(res.statusCode ?? 0, `${method} ${path}: the agent's answer is not JSON`));
          }
          const status = res.statusCode ?? 0;
          if (status >= 400) return reject(new PeerError(status, `${method} ${path}: ${String(parsed.error)}`));
          resolve({ status, body: parsed, localAddress });
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}

/**
 * argv of a node one-off that POSTs `body` to `path` of an HTTP server on the
 * unix socket `socketPath` and prints the answer (node is in every VM; curl
 * need not be). Exit 1 with the error on stderr when it cannot connect.
 */
export function httpPostOverUnix(socketPath: string, path: string, body: string, node = 'node'): string[] {
  const script = `const [socketPath, path, body] = process.argv.slice(1);
const req = require('node:http').request({ socketPath, path, method: 'POST' }, (res) => res.pipe(process.stdout));
req.on('error', (e) => { console.error(e.message); process.exit(1); });
req.end(body);`;
  return [node, '-e', script, socketPath, path, body];
}
