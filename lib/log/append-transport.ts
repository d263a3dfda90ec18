// A winston transport that appends synchronously with O_APPEND, one write()
// per message. Why synchronous: a driver process answers and exits at once,
// and every line must be on disk by then. Why O_APPEND and one write: several
// driver and GC processes append to the same file at the same time, and a
// single O_APPEND write to a local file is never split by another writer's.
// Why open per message: logrotate may move the file away at any moment; the
// next message simply creates a fresh file (so `create` rotation is safe).
import fs from 'node:fs';
import path from 'node:path';
import winston from 'winston';
// Type only (erased): winston's own typings import this package, so it
// resolves wherever winston's types do.
import type TransportStream from 'winston-transport';

// winston exports its transport base class at runtime as `Transport`, but its
// typings name it `transport`: take the runtime value with the right type.
const Transport = (winston as unknown as { Transport: typeof TransportStream }).Transport;

export interface AppendTransportOptions {
  file: string;
  /** Turns the message text into the bytes to append (prefixing each line). */
  render: (message: string) => string;
  level?: string;
}

export class SyncAppendTransport extends Transport {
  readonly file: string;
  private readonly render: (message: string) => string;
  private dirReady = false;

  constructor(options: AppendTransportOptions) {
    super({ level: options.level });
    this.file = options.file;
    this.render = options.render;
  }

  override log(info: { message?: unknown }, callback: () => void): void {
    const text = this.render(String(info.message ?? ''));
    try {
      this.append(text);
    } catch (err) {
      // Logging must never break a verb; stderr is captured by the toolstack.
      process.stderr.write(`SMlog write to ${this.file} failed (${(err as Error).message}): ${text}`);
    }
    callback();
  }

  private append(text: string): void {
    const fd = this.open();
    try {
      const bytes = Buffer.from(text, 'utf8');
      // One write() normally takes it all. A short write means a full disk or
      // a huge message: finish it rather than leave half a line.
      let done = 0;
      while (done < bytes.length) done += fs.writeSync(fd, bytes, done, bytes.length - done);
    } finally {
      fs.closeSync(fd);
    }
  }

  private open(): number {
    const flags = fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT;
    if (this.dirReady) {
      try {
        return fs.openSync(this.file, flags, 0o640);
      } catch (err) {
        // The directory vanished (a test cleaning up, an operator): remake it.
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    this.dirReady = true;
    return fs.openSync(this.file, flags, 0o640);
  }
}
