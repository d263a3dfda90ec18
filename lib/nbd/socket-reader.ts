/**
 * Pull-style reading of exact byte counts from a stream. The connection loop
 * asks for what it needs next; while nobody asks, at most `highWater` bytes
 * are buffered and then the socket is paused, so a client that sends faster
 * than the device works is held back by TCP/unix-socket flow control.
 */
import type { Duplex } from 'node:stream';
import { NbdProtocolError } from './errors.js';

/** The peer closed (or the reader was stopped) before the bytes asked for arrived. */
export class StreamEndedError extends Error {
  constructor(message = 'connection closed by peer') {
    super(message);
    this.name = 'StreamEndedError';
  }
}

interface Waiter {
  length: number;
  discard: boolean;
  resolve: (buf: Buffer) => void;
  reject: (err: Error) => void;
}

const EMPTY = Buffer.alloc(0);

export class SocketReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: Waiter | undefined;
  private ended: Error | undefined;
  private eof = false;

  constructor(
    private readonly stream: Duplex,
    private readonly highWater = 1024 * 1024,
  ) {
    stream.on('data', (chunk: Buffer) => this.onData(chunk));
    stream.on('end', () => this.onEnd());
    stream.on('close', () => this.onEnd());
    stream.on('error', (err) => this.stop(new StreamEndedError(`connection error: ${err.message}`)));
  }

  /** Exactly `length` bytes; rejects with StreamEndedError if the stream ends first. */
  read(length: number): Promise<Buffer> {
    return this.take(length, false);
  }

  /** Consumes and drops `length` bytes without holding them all in memory. */
  async skip(length: number): Promise<void> {
    await this.take(length, true);
  }

  /** Fails the pending and every later read; data that arrives is dropped. */
  stop(reason: Error = new StreamEndedError('reader stopped')): void {
    if (this.ended) return;
    this.ended = reason;
    this.chunks = [];
    this.buffered = 0;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(reason);
  }

  private take(length: number, discard: boolean): Promise<Buffer> {
    if (this.waiter) return Promise.reject(new NbdProtocolError('concurrent reads on one connection'));
    if (this.ended) return Promise.reject(this.ended);
    return new Promise<Buffer>((resolve, reject) => {
      this.waiter = { length, discard, resolve, reject };
      this.satisfy();
      if (!this.waiter) return;
      if (this.eof) this.stop(new StreamEndedError());
      else this.stream.resume();
    });
  }

  /** The peer sent its last byte: what is buffered can still be read (a DISC after requests). */
  private onEnd(): void {
    this.eof = true;
    if (this.waiter) this.stop(new StreamEndedError());
  }

  private onData(chunk: Buffer): void {
    if (this.ended) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.satisfy();
    const want = this.waiter?.length ?? 0;
    if (this.buffered >= this.highWater && this.buffered >= want) this.stream.pause();
  }

  private satisfy(): void {
    const w = this.waiter;
    if (!w) return;
    if (w.discard) {
      // Drop what is here; keep waiting for the rest.
      const drop = Math.min(w.length, this.buffered);
      this.consume(drop, true);
      w.length -= drop;
      if (w.length > 0) return;
      this.waiter = undefined;
      w.resolve(EMPTY);
      return;
    }
    if (this.buffered < w.length) return;
    this.waiter = undefined;
    w.resolve(this.consume(w.length, false));
  }

  private consume(length: number, discard: boolean): Buffer {
    if (length === 0) return EMPTY;
    const first = this.chunks[0];
    if (first.length >= length) {
      const out = first.subarray(0, length);
      if (first.length === length) this.chunks.shift();
      else this.chunks[0] = first.subarray(length);
      this.buffered -= length;
      return out;
    }
    const out = discard ? EMPTY : Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const c = this.chunks[0];
      const n = Math.min(c.length, length - done);
      if (!discard) c.copy(out, done, 0, n);
      if (n === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(n);
      done += n;
    }
    this.buffered -= length;
    return out;
  }
}
