/**
 * A small NBD client for reading an export (the incremental backup of
 * `sm-vhd cbt-export`): fixed newstyle handshake with NBD_OPT_EXPORT_NAME,
 * then READ requests with simple replies, several in flight, matched to
 * their replies by cookie (a server may answer out of order).
 */
import net from 'node:net';
import {
  CLIENT_FLAG_FIXED_NEWSTYLE,
  CLIENT_FLAG_NO_ZEROES,
  Cmd,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  NBDMAGIC,
  Opt,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
} from './protocol.js';
import { SocketReader } from './socket-reader.js';

interface Pending {
  length: number;
  resolve: (data: Buffer) => void;
  reject: (err: Error) => void;
}

export class NbdClient {
  private cookie = 1n;
  private readonly pending = new Map<bigint, Pending>();
  private failed: Error | undefined;
  /** Payload bytes received in READ replies. */
  bytesRead = 0;

  private constructor(
    private readonly socket: net.Socket,
    private readonly reader: SocketReader,
    /** Size of the export in bytes. */
    readonly size: number,
  ) {
    void this.receive();
  }

  /** Connects to the unix socket `path` and opens export `name`. */
  static async connect(path: string, name: string): Promise<NbdClient> {
    const socket = net.connect(path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const reader = new SocketReader(socket, 64 * 1024 * 1024);
    try {
      const greeting = await reader.read(18);
      if (greeting.readBigUInt64BE(0) !== NBDMAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('not an NBD server (bad greeting)');
      const serverFlags = greeting.readUInt16BE(16);
      if (!(serverFlags & FLAG_FIXED_NEWSTYLE)) throw new Error('the NBD server does not speak fixed newstyle');
      const noZeroes = (serverFlags & FLAG_NO_ZEROES) !== 0;
      const flags = Buffer.alloc(4);
      flags.writeUInt32BE(CLIENT_FLAG_FIXED_NEWSTYLE | (noZeroes ? CLIENT_FLAG_NO_ZEROES : 0));
      const nameBytes = Buffer.from(name, 'utf8');
      const opt = Buffer.alloc(16);
      opt.writeBigUInt64BE(IHAVEOPT, 0);
      opt.writeUInt32BE(Opt.EXPORT_NAME, 8);
      opt.writeUInt32BE(nameBytes.length, 12);
      socket.write(Buffer.concat([flags, opt, nameBytes]));
      const reply = await reader.read(10);
      if (!noZeroes) await reader.skip(124);
      return new NbdClient(socket, reader, Number(reply.readBigUInt64BE(0)));
    } catch (err) {
      socket.destroy();
      throw err;
    }
  }

  /** `length` bytes from `offset`. */
  read(offset: number, length: number): Promise<Buffer> {
    if (this.failed) return Promise.reject(this.failed);
    const cookie = this.cookie++;
    const req = Buffer.alloc(28);
    req.writeUInt32BE(REQUEST_MAGIC, 0);
    req.writeUInt16BE(0, 4);
    req.writeUInt16BE(Cmd.READ, 6);
    req.writeBigUInt64BE(cookie, 8);
    req.writeBigUInt64BE(BigInt(offset), 16);
    req.writeUInt32BE(length, 24);
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, { length, resolve, reject });
      this.socket.write(req);
    });
  }

  /** Disconnects (NBD_CMD_DISC) and closes the socket. */
  async close(): Promise<void> {
    const req = Buffer.alloc(28);
    req.writeUInt32BE(REQUEST_MAGIC, 0);
    req.writeUInt16BE(Cmd.DISC, 6);
    await new Promise<void>((resolve) => this.socket.end(req, resolve));
    this.socket.destroy();
  }

  private async receive(): Promise<void> {
    try {
      for (;;) {
        const h = await this.reader.read(16);
        if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error('unexpected NBD reply (not a simple reply)');
        const p = this.pending.get(h.readBigUInt64BE(8));
        if (!p) throw new Error('NBD reply for no request');
        this.pending.delete(h.readBigUInt64BE(8));
        const error = h.readUInt32BE(4);
        if (error !== 0) {
          p.reject(new Error(`NBD read failed (error ${error})`));
          continue;
        }
        const data = await this.reader.read(p.length);
        this.bytesRead += data.length;
        p.resolve(data);
      }
    } catch (err) {
      this.failed = err as Error;
      for (const p of this.pending.values()) p.reject(this.failed);
      this.pending.clear();
    }
  }
}
