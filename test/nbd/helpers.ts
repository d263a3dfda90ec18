/** Shared helpers for the NBD tests: a served device on a temp socket, real client runners, a raw protocol client. */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../../lib/nbd/block-device.js';
import { NbdServer, PassthroughDevice, type NbdLogger, type NbdServerOptions } from '../../lib/nbd/index.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;

/** libnbd tools and fio want this URI form. */
export const nbdUri = (socket: string, name: string) => `nbd+unix:///${name}?socket=${socket}`;
/** The form the established SM hands qemu (params_nbd). */
export const qemuUri = (socket: string, name: string) => `nbd:unix:${socket}:exportname=${name}`;

export class LogLines implements NbdLogger {
  readonly lines: string[] = [];
  info(m: string) {
    this.lines.push(`info ${m}`);
  }
  warn(m: string) {
    this.lines.push(`warn ${m}`);
  }
  error(m: string) {
    this.lines.push(`error ${m}`);
  }
}

export interface Served {
  server: NbdServer;
  socket: string;
  dir: string;
  log: LogLines;
}

/** A server on a fresh temp socket; always destroyed and removed afterwards. */
export async function withServer<T>(options: NbdServerOptions, fn: (s: Served) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'nbd-test-'));
  const log = new LogLines();
  const server = new NbdServer({ logger: log, ...options });
  const socket = join(dir, 'nbd.sock');
  await server.listen(socket);
  try {
    return await fn({ server, socket, dir, log });
  } finally {
    await server.destroy();
    await rm(dir, { recursive: true, force: true });
  }
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs a real client (argv, never a shell). A missing tool fails the test:
 * `.ci/install` puts every one of them on the machine. /usr/bin goes first so
 * nbdsh gets the system python that has the libnbd module.
 */
export function run(cmd: string, args: string[], timeoutMs = 30_000, cwd?: string): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      { cwd, timeout: timeoutMs, maxBuffer: 64 * MiB, env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}`, LIBNBD_DEBUG: '0' } },
      (err, stdout, stderr) => {
        const code = err ? (err as NodeJS.ErrnoException).code : 0;
        if (code === 'ENOENT') return reject(new Error(`${cmd} is not installed (run .ci/install)`));
        if (err && typeof code !== 'number') return reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr}`));
        resolve({ code: typeof code === 'number' ? code : 0, stdout, stderr });
      },
    );
  });
}

/** Like run() but a nonzero exit throws with the output. */
export async function runOk(cmd: string, args: string[], timeoutMs?: number, cwd?: string): Promise<string> {
  const r = await run(cmd, args, timeoutMs, cwd);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** Deterministic bytes that differ per offset and seed (so misplaced data shows). */
export function pattern(length: number, seed: number): Buffer {
  const buf = Buffer.alloc(Math.ceil(length / 4) * 4);
  let x = Math.imul(seed, 2654435761) >>> 0 || 1;
  for (let i = 0; i < buf.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    buf.writeUInt32LE(x, i);
  }
  return buf.subarray(0, length);
}

export async function readAll(device: BlockDevice, offset = 0, length = device.size): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  await device.read(buf, offset);
  return buf;
}

/** Records each call on entry and exit under a name: for call-order tests through stacked wrappers. */
export class RecordingDevice extends PassthroughDevice {
  constructor(
    inner: BlockDevice,
    readonly name: string,
    readonly trace: string[],
  ) {
    super(inner);
  }
  private async record<T>(op: string, fn: () => Promise<T>): Promise<T> {
    this.trace.push(`${this.name}>${op}`);
    try {
      return await fn();
    } finally {
      this.trace.push(`${this.name}<${op}`);
    }
  }
  override read(buf: Buffer, offset: number) {
    return this.record('read', () => super.read(buf, offset));
  }
  override write(data: Buffer, offset: number, opts?: WriteOptions) {
    return this.record(`write${opts?.fua ? '+fua' : ''}:${data.length}`, () => super.write(data, offset, opts));
  }
  override flush() {
    return this.record('flush', () => super.flush());
  }
  override trim(offset: number, length: number, opts?: WriteOptions) {
    return this.record('trim', () => super.trim(offset, length, opts));
  }
  override zero(offset: number, length: number, opts?: ZeroOptions) {
    return this.record('zero', () => super.zero(offset, length, opts));
  }
  override extents(offset: number, length: number): Promise<Extent[]> {
    return this.record('extents', () => super.extents(offset, length));
  }
}

/** Delays every write (and optionally reads) so requests stay in flight long enough to observe. */
export class SlowDevice extends PassthroughDevice {
  constructor(
    inner: BlockDevice,
    readonly delayMs: number,
    readonly slowReads = false,
  ) {
    super(inner);
  }
  override async write(data: Buffer, offset: number, opts?: WriteOptions) {
    await sleep(this.delayMs);
    return super.write(data, offset, opts);
  }
  override async read(buf: Buffer, offset: number) {
    if (this.slowReads) await sleep(this.delayMs);
    return super.read(buf, offset);
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// --- A minimal raw client, written from the spec independently of the server's code. ---

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, SET_META_CONTEXT: 10, EXTENDED_HEADERS: 11 };
export const REP_ACK = 1;
export const REP_ERR_UNSUP = 0x80000001;
export const REP_ERR_INVALID = 0x80000003;
export const REP_ERR_UNKNOWN = 0x80000006;
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 };
export const EPERM = 1;
export const EINVAL = 22;
export const ENOSPC = 28;

export class RawClient {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: (() => void) | undefined;
  private ended = false;
  readonly closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.buffered += c.length;
      this.waiter?.();
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.ended = true;
        this.waiter?.();
        resolve();
      }),
    );
  }

  static connect(path: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(path);
      s.once('connect', () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  /** Exactly n bytes, or undefined if the server closed first (or timeoutMs passed). */
  async read(n: number, timeoutMs = 5000): Promise<Buffer | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered < n) {
      if (this.ended || Date.now() > deadline) return undefined;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.waiter = undefined;
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = [all.subarray(n)];
    this.buffered -= n;
    return all.subarray(0, n);
  }

  write(buf: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(buf);
  }

  /** Reads the greeting and sends client flags (fixed newstyle + no zeroes unless given). */
  async greet(clientFlags = 3): Promise<void> {
    const g = await this.read(18);
    if (!g || g.readBigUInt64BE(0) !== NBDMAGIC || g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('bad greeting');
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags, 0);
    this.write(f);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), magic = IHAVEOPT): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(magic, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(data.length, 12);
    this.write(Buffer.concat([h, data]));
  }

  async optionReply(): Promise<{ option: number; type: number; data: Buffer } | undefined> {
    const h = await this.read(20);
    if (!h) return undefined;
    const data = (await this.read(h.readUInt32BE(16))) ?? Buffer.alloc(0);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }

  /** GO with no info requests; returns size and transmission flags, or the error reply type. */
  async go(name: string): Promise<{ size: bigint; flags: number } | { error: number }> {
    const n = Buffer.from(name);
    const d = Buffer.alloc(4 + n.length + 2);
    d.writeUInt32BE(n.length, 0);
    n.copy(d, 4);
    this.sendOption(OPT.GO, d);
    let info: { size: bigint; flags: number } | undefined;
    for (;;) {
      const r = await this.optionReply();
      if (!r) throw new Error('closed during GO');
      if (r.type === REP_ACK) return info!;
      if (r.type >= 0x80000000) return { error: r.type };
      if (r.type === 3 && r.data.readUInt16BE(0) === 0) info = { size: r.data.readBigUInt64BE(2), flags: r.data.readUInt16BE(10) };
    }
  }

  /** Handshake to transmission on `name` with simple replies. */
  static async open(path: string, name: string): Promise<RawClient> {
    const c = await RawClient.connect(path);
    await c.greet();
    const r = await c.go(name);
    if ('error' in r) throw new Error(`GO ${name}: 0x${r.error.toString(16)}`);
    return c;
  }

  request(type: number, offset: number | bigint, length: number, opts: { flags?: number; cookie?: bigint; payload?: Buffer } = {}): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(opts.flags ?? 0, 4);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(opts.cookie ?? 1n, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    this.write(opts.payload ? Buffer.concat([h, opts.payload]) : h);
  }

  /** A simple reply (data read too when dataLength is given and error is 0). */
  async simpleReply(dataLength = 0): Promise<{ error: number; cookie: bigint; data?: Buffer } | undefined> {
    const h = await this.read(16);
    if (!h) return undefined;
    if (h.readUInt32BE(0) !== 0x67446698) throw new Error(`not a simple reply: magic 0x${h.readUInt32BE(0).toString(16)}`);
    const error = h.readUInt32BE(4);
    const data = error === 0 && dataLength > 0 ? await this.read(dataLength) : undefined;
    return { error, cookie: h.readBigUInt64BE(8), data };
  }

  async read_(offset: number, length: number): Promise<Buffer> {
    this.request(CMD.READ, offset, length, { cookie: 77n });
    const r = await this.simpleReply(length);
    if (!r || r.error !== 0 || !r.data) throw new Error(`READ failed: ${r?.error}`);
    return r.data;
  }

  destroy(): void {
    this.socket.destroy();
  }
}
