/**
 * One client connection: handshake, then the transmission loop. Requests are
 * read in order and run concurrently; each reply goes out as one write when
 * its request completes, so replies may leave out of order but never
 * interleave. Anything the peer does wrong ends this connection only.
 */
import type { Duplex } from 'node:stream';
import { MAX_PAYLOAD } from './capabilities.js';
import { commandName, executeRequest, rejectionReply, validateRequest, type Session } from './commands.js';
import { NbdProtocolError } from './errors.js';
import { handshake, type ExportTable, type Negotiated } from './handshake.js';
import { InFlightBudget } from './in-flight.js';
import type { NbdLogger } from './logger.js';
import { Cmd, decodeRequest, REQUEST_SIZE } from './protocol.js';
import { SocketReader, StreamEndedError } from './socket-reader.js';

/** A refused WRITE's payload is skipped up to this size; a longer one drops the connection instead. */
export const MAX_SKIPPED_PAYLOAD = 2 * MAX_PAYLOAD;

export interface ConnectionLimits {
  handshakeTimeoutMs: number;
  maxInFlightRequests: number;
  maxInFlightBytes: number;
}

export class NbdConnection {
  /** Settles once the socket is done and the device given back; never rejects. */
  readonly done: Promise<void>;
  private readonly reader: SocketReader;
  private readonly budget: InFlightBudget;
  /** Device calls not yet settled: the device is released only after them. */
  private readonly running = new Set<Promise<unknown>>();
  private stopping = false;
  private transmitting = false;
  private exportName = '';
  private readonly socketClosed: Promise<void>;

  constructor(
    readonly id: number,
    private readonly socket: Duplex,
    private readonly exports: ExportTable,
    private readonly limits: ConnectionLimits,
    private readonly logger: NbdLogger,
  ) {
    // A reset peer must not become an unhandled 'error' event (that would end the process).
    socket.on('error', (err) => this.logger.info(`nbd: connection ${id}: ${err.message}`));
    this.socketClosed = new Promise((resolve) => socket.once('close', () => resolve()));
    this.reader = new SocketReader(socket);
    this.budget = new InFlightBudget(limits.maxInFlightRequests, limits.maxInFlightBytes);
    this.done = this.run().catch((err) => this.logger.error(`nbd: connection ${id}: ${(err as Error).stack ?? err}`));
  }

  /** Graceful: read no further request, let those in flight reply, then close. */
  drain(): void {
    if (this.stopping) return;
    this.stopping = true;
    if (this.transmitting) this.reader.stop(new StreamEndedError('server closing'));
    else this.socket.destroy(); // still haggling: nothing in flight to wait for
  }

  /** Abort: the socket goes now; device calls already started still settle before release. */
  destroy(): void {
    this.stopping = true;
    this.reader.stop(new StreamEndedError('server destroyed'));
    this.socket.destroy();
  }

  private async run(): Promise<void> {
    const negotiated = await this.negotiate();
    if (!negotiated) return;
    this.exportName = negotiated.exportName;
    const { caps } = negotiated;
    this.logger.info(
      `nbd: connection ${this.id} opened export ${JSON.stringify(negotiated.exportName)} (size ${caps.size}, ${caps.writable ? 'rw' : 'ro'}${caps.structuredReplies ? ', structured' : ''})`,
    );
    const session: Session = { device: negotiated.opened.device, caps, baseAllocation: negotiated.baseAllocation };
    let reason = 'client disconnected';
    try {
      this.transmitting = true;
      if (this.stopping) this.reader.stop(new StreamEndedError('server closing'));
      reason = await this.transmit(session);
      // Replies still queued are flushed before the close, unless the peer has gone.
      await Promise.race([this.budget.idle(), this.socketClosed]);
    } catch (err) {
      reason = `error: ${(err as Error).message}`;
      this.logger.warn(`nbd: connection ${this.id} export ${JSON.stringify(this.exportName)}: ${(err as Error).message}`);
      this.socket.destroy();
    } finally {
      this.socket.end(() => this.socket.destroy());
      await Promise.allSettled([...this.running]);
      try {
        await negotiated.opened.release();
      } catch (err) {
        this.logger.error(`nbd: connection ${this.id}: closing export ${JSON.stringify(this.exportName)} failed: ${(err as Error).message}`);
      }
      this.logger.info(`nbd: connection ${this.id} closed export ${JSON.stringify(this.exportName)} (${reason})`);
    }
  }

  private async negotiate(): Promise<Negotiated | undefined> {
    const timer = setTimeout(() => {
      this.logger.warn(`nbd: connection ${this.id}: handshake not finished in ${this.limits.handshakeTimeoutMs} ms`);
      this.socket.destroy();
    }, this.limits.handshakeTimeoutMs);
    try {
      const negotiated = await handshake(this.socket, this.reader, this.exports);
      if (!negotiated) this.socket.end(() => this.socket.destroy()); // ABORT
      return negotiated;
    } catch (err) {
      if (err instanceof StreamEndedError) this.logger.info(`nbd: connection ${this.id} closed during handshake`);
      else this.logger.warn(`nbd: connection ${this.id}: handshake: ${(err as Error).message}`);
      this.socket.destroy();
      return undefined;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Reads and dispatches requests until DISC, EOF or drain; returns why it stopped. */
  private async transmit(session: Session): Promise<string> {
    while (!this.stopping) {
      let header: Buffer;
      try {
        header = await this.reader.read(REQUEST_SIZE);
      } catch (err) {
        if (err instanceof StreamEndedError) return this.stopping ? 'server closing' : 'client disconnected';
        throw err;
      }
      const req = decodeRequest(header);
      if (!req) throw new NbdProtocolError('bad request magic');
      if (req.type === Cmd.DISC) {
        this.stopping = true;
        return 'client sent DISC';
      }
      const rejection = validateRequest(req, session);
      let payload: Buffer | undefined;
      if (req.type === Cmd.WRITE && rejection) {
        if (req.length > MAX_SKIPPED_PAYLOAD) throw new NbdProtocolError(`WRITE of ${req.length} bytes refused (${rejection.message}); too long to skip`);
        await this.reader.skip(req.length);
      }
      const cost = !rejection && (req.type === Cmd.READ || req.type === Cmd.WRITE) ? req.length : 0;
      await this.budget.acquire(cost);
      if (rejection) {
        this.logger.info(`nbd: connection ${this.id}: refused ${rejection.message} (${rejection.errno})`);
        this.send(rejectionReply(req, session, rejection), cost);
        continue;
      }
      if (req.type === Cmd.WRITE) {
        try {
          payload = await this.reader.read(req.length);
        } catch (err) {
          this.budget.release(cost);
          if (err instanceof StreamEndedError) return `${this.stopping ? 'server closing' : 'client disconnected'} during a ${commandName(req.type)} payload`;
          throw err;
        }
      }
      const op = executeRequest(req, session, payload);
      this.running.add(op);
      void op.then((reply) => {
        this.running.delete(op);
        this.send(reply, cost);
      });
    }
    return 'server closing';
  }

  /** One buffer per reply: Node queues whole writes, so messages never interleave. */
  private send(reply: Buffer, cost: number): void {
    if (this.socket.destroyed || !this.socket.writable) {
      this.budget.release(cost);
      return;
    }
    this.socket.write(reply, () => this.budget.release(cost));
  }
}
