/**
 * The NBD server: a table of named exports served on unix sockets (or on
 * sockets the caller accepted). Lifecycle as undici's dispatchers: `close()`
 * drains (no new connections or requests, in-flight requests answered),
 * `destroy()` aborts, and any use afterwards fails with NbdServerClosedError.
 */
import fs from 'node:fs';
import net from 'node:net';
import { acceptsConnections } from '../util/socket-probe.js';
import { dirname } from 'node:path';
import type { Duplex } from 'node:stream';
import type { BlockDevice } from './block-device.js';
import { NbdConnection, type ConnectionLimits } from './connection.js';
import { NbdServerClosedError } from './errors.js';
import { MAX_NAME_LENGTH, type ExportTable, type OpenedExport } from './handshake.js';
import { silentLogger, type NbdLogger } from './logger.js';

/** Makes a device for one connection; the server closes it when that connection ends. */
export type ExportFactory = () => BlockDevice | Promise<BlockDevice>;

export interface ExportOptions {
  /** Sent in LIST and INFO_DESCRIPTION. */
  description?: string;
}

export interface NbdServerOptions {
  logger?: NbdLogger;
  /** Connections open at once, handshaking ones included; more are closed at once. Default 64. */
  maxConnections?: number;
  /** A client that has not reached transmission by then is dropped. Default 10 s. */
  handshakeTimeoutMs?: number;
  /** Per connection: requests whose reply is not yet written. Default 64. */
  maxInFlightRequests?: number;
  /** Per connection: READ/WRITE payload bytes held at once. Default 64 MiB. */
  maxInFlightBytes?: number;
}

interface ExportEntry {
  source: BlockDevice | ExportFactory;
  description?: string;
}

export class NbdServer {
  private readonly exports = new Map<string, ExportEntry>();
  private readonly listeners = new Map<string, net.Server>();
  private readonly connections = new Set<NbdConnection>();
  private readonly logger: NbdLogger;
  private readonly maxConnections: number;
  private readonly limits: ConnectionLimits;
  private nextId = 1;
  private state: 'open' | 'closing' | 'destroyed' = 'open';
  private closing: Promise<void> | undefined;
  private readonly table: ExportTable = {
    list: () => [...this.exports].map(([name, e]) => ({ name, description: e.description })),
    description: (name) => this.exports.get(name)?.description,
    open: (name) => this.openExport(name),
  };

  constructor(options: NbdServerOptions = {}) {
    this.logger = options.logger ?? silentLogger;
    this.maxConnections = options.maxConnections ?? 64;
    this.limits = {
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 10_000,
      maxInFlightRequests: options.maxInFlightRequests ?? 64,
      maxInFlightBytes: options.maxInFlightBytes ?? 64 * 1024 * 1024,
    };
  }

  /** True once close() or destroy() was called. */
  get closed(): boolean {
    return this.state !== 'open';
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * Serves `source` as `name` to new connections. A BlockDevice is shared by
   * every connection and stays the caller's to close; a factory is called per
   * connection (and per INFO) and what it returns is closed by the server.
   * The name "" is the default export (a client that names none gets it).
   */
  addExport(name: string, source: BlockDevice | ExportFactory, options: ExportOptions = {}): void {
    this.assertOpen();
    if (Buffer.byteLength(name, 'utf8') > MAX_NAME_LENGTH) throw new RangeError(`export name longer than ${MAX_NAME_LENGTH} bytes`);
    if (this.exports.has(name)) throw new Error(`export ${JSON.stringify(name)} already exists`);
    this.exports.set(name, { source, description: options.description });
  }

  /** Stops offering `name` to new clients; connections already using it carry on. */
  removeExport(name: string): boolean {
    return this.exports.delete(name);
  }

  exportNames(): string[] {
    return [...this.exports.keys()];
  }

  /** Listens on a unix socket (mode 0600; a stale socket file is replaced). */
  async listen(socketPath: string): Promise<void> {
    this.assertOpen();
    if (this.listeners.has(socketPath)) throw new Error(`already listening on ${socketPath}`);
    fs.mkdirSync(dirname(socketPath), { recursive: true });
    await removeStaleSocket(socketPath);
    // Half-open: a client may shut its side after DISC and still get outstanding replies.
    const server = net.createServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    fs.chmodSync(socketPath, 0o600);
    server.on('error', (err) => this.logger.error(`nbd: listener ${socketPath}: ${err.message}`));
    this.listeners.set(socketPath, server);
    this.logger.info(`nbd: listening on ${socketPath}`);
    if (this.state !== 'open') {
      // close() ran while we were binding.
      await this.stopListening();
      throw new NbdServerClosedError();
    }
  }

  /** Serves an already-connected stream (e.g. a socket accepted elsewhere). */
  handleSocket(socket: Duplex): void {
    if (this.state !== 'open') {
      socket.destroy();
      throw new NbdServerClosedError();
    }
    this.accept(socket);
  }

  /** Graceful: stop accepting, let in-flight requests reply, close every connection. */
  close(): Promise<void> {
    if (this.state === 'destroyed') return this.closing ?? Promise.resolve();
    if (this.closing) return this.closing;
    this.state = 'closing';
    this.closing = (async () => {
      const stopped = this.stopListening();
      for (const c of this.connections) c.drain();
      await Promise.all([stopped, ...[...this.connections].map((c) => c.done)]);
      this.logger.info('nbd: server closed');
    })();
    return this.closing;
  }

  /** Abort: drop every connection now; resolves once devices are given back. */
  async destroy(): Promise<void> {
    const wasClosing = this.closing;
    this.state = 'destroyed';
    const stopped = this.stopListening();
    for (const c of this.connections) c.destroy();
    this.closing = Promise.all([stopped, wasClosing, ...[...this.connections].map((c) => c.done)]).then(() => undefined);
    await this.closing;
  }

  private accept(socket: Duplex): void {
    if (this.state !== 'open') {
      socket.destroy();
      return;
    }
    if (this.connections.size >= this.maxConnections) {
      this.logger.warn(`nbd: refusing a connection: ${this.maxConnections} already open`);
      socket.on('error', () => {});
      socket.destroy();
      return;
    }
    const connection = new NbdConnection(this.nextId++, socket, this.table, this.limits, this.logger);
    this.connections.add(connection);
    void connection.done.then(() => this.connections.delete(connection));
  }

  private async openExport(name: string): Promise<OpenedExport | undefined> {
    const entry = this.exports.get(name);
    if (!entry) return undefined;
    if (typeof entry.source !== 'function') return { device: entry.source, release: async () => {} };
    const device = await entry.source();
    return { device, release: () => device.close() };
  }

  private async stopListening(): Promise<void> {
    const servers = [...this.listeners];
    this.listeners.clear();
    await Promise.all(
      servers.map(
        ([path, server]) =>
          new Promise<void>((resolve) =>
            server.close(() => {
              fs.rmSync(path, { force: true });
              resolve();
            }),
          ),
      ),
    );
  }

  private assertOpen(): void {
    if (this.state !== 'open') throw new NbdServerClosedError();
  }
}

/**
 * A socket file nobody listens on (left by a crash) would make listen() fail
 * with EADDRINUSE; one a live server answers on is left alone.
 */
async function removeStaleSocket(socketPath: string): Promise<void> {
  try {
    if (!fs.statSync(socketPath).isSocket()) return;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  const live = await acceptsConnections(socketPath);
  if (live) throw new Error(`${socketPath}: another server is listening there`);
  fs.rmSync(socketPath, { force: true });
}
