// A seeded NBD protocol fuzzer: malformed handshakes and transmission-phase
// requests built from valid ones and then mutated, sent to any NBD server on a
// unix socket. What the server sends back is judged against the protocol
// (nbd's doc/proto.md), written here independently of lib/nbd: the framing of
// what was sent is re-parsed as a server must parse it, each parsed request
// gets the set of answers the protocol allows, and the device's bytes may
// change only where a write the protocol allows was sent.
import net from 'node:net';
import { SeededRandom } from '../helpers/random.js';

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;

const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META_CONTEXT: 9, SET_META_CONTEXT: 10 };
const REP = { ACK: 1, SERVER: 2, INFO: 3, META_CONTEXT: 4 };
const REP_NAMES: Record<number, string> = { 1: 'ACK', 2: 'SERVER', 3: 'INFO', 4: 'META_CONTEXT' };
const REP_ERR_NAMES: Record<number, string> = { 1: 'ERR_UNSUP', 2: 'ERR_POLICY', 3: 'ERR_INVALID', 4: 'ERR_PLATFORM', 5: 'ERR_TLS_REQD', 6: 'ERR_UNKNOWN', 7: 'ERR_SHUTDOWN', 8: 'ERR_BLOCK_SIZE_REQD', 9: 'ERR_TOO_BIG' };
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 };
const CMD_FLAG = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 };
const TFLAG = { READ_ONLY: 2, SEND_FLUSH: 4, SEND_FUA: 8, SEND_TRIM: 32, SEND_WRITE_ZEROES: 64, SEND_DF: 128, SEND_CACHE: 1024, SEND_FAST_ZERO: 2048 };
export const ERRNO_NAMES: Record<number, string> = { 0: 'OK', 1: 'EPERM', 5: 'EIO', 12: 'ENOMEM', 22: 'EINVAL', 28: 'ENOSPC', 75: 'EOVERFLOW', 95: 'ENOTSUP', 108: 'ESHUTDOWN' };
const EPERM = 1;
const EINVAL = 22;
const ENOSPC = 28;
const EOVERFLOW = 75;
const MAX_PAYLOAD = 32 * 1024 * 1024;

/** The server under test: where it listens, what it exports, and a view of the device that bypasses the fuzzed connections. */
export interface FuzzTarget {
  socket: string;
  /** A writable export (and optionally a read-only one over the same device). */
  writable: string;
  readOnly?: string;
  size: number;
  /** Bytes at and past this offset belong to the well-behaved client; fuzzed writes that are valid never reach them. */
  protectedFrom: number;
  readDevice(offset: number, length: number): Promise<Buffer>;
  /** Resolves once the server has let go of every fuzzed connection (their device calls settled). */
  settled(): Promise<void>;
}

/** Outcome counts, printed at the end of a run. */
export class Outcomes {
  readonly counts = new Map<string, number>();
  add(key: string, n = 1): void {
    this.counts.set(key, (this.counts.get(key) ?? 0) + n);
  }
  text(): string {
    return [...this.counts.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
  }
}

// ---------------------------------------------------------------- a peer that records everything

class Peer {
  private chunks: Buffer[] = [];
  private size = 0;
  private wake: (() => void) | undefined;
  closed = false;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.size += d.length;
      this.wake?.();
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
  }

  static connect(path: string): Promise<Peer> {
    return new Promise((resolve, reject) => {
      const s = net.connect(path);
      s.once('connect', () => resolve(new Peer(s)));
      s.once('error', reject);
    });
  }

  get received(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0] ?? Buffer.alloc(0);
  }

  /** Waits until `n` bytes arrived, the peer closed, or `timeoutMs` passed. */
  async until(n: number, timeoutMs: number): Promise<boolean> {
    const end = Date.now() + timeoutMs;
    while (this.size < n && !this.closed && Date.now() < end) await this.nap(end - Date.now());
    return this.size >= n;
  }

  /** Waits until the peer closed or nothing arrived for `quietMs`. */
  async quiet(quietMs: number, maxMs: number): Promise<void> {
    const end = Date.now() + maxMs;
    for (let seen = -1; !this.closed && seen !== this.size && Date.now() < end; ) {
      seen = this.size;
      await this.nap(quietMs);
    }
  }

  private nap(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, Math.max(1, ms));
      this.wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }

  /** Waits until the peer closed, at most `timeoutMs`; whether it did. */
  async closedWithin(timeoutMs: number): Promise<boolean> {
    const end = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < end) await this.nap(end - Date.now());
    return this.closed;
  }

  write(b: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(b);
  }

  async sendInPieces(b: Buffer, rng: SeededRandom): Promise<void> {
    if (b.length === 0) return;
    if (rng.next() < 0.7) return this.write(b);
    for (let at = 0; at < b.length; ) {
      const n = rng.int(1, Math.max(1, Math.min(b.length - at, 64)));
      this.write(b.subarray(at, at + n));
      at += n;
      await new Promise((r) => setImmediate(r));
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}

// ---------------------------------------------------------------- encoding

interface Option {
  magic: bigint;
  code: number;
  data: Buffer;
  /** Length field as sent, when it lies about the data. */
  length?: number;
}

function encodeOption(o: Option): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(o.magic, 0);
  h.writeUInt32BE(o.code >>> 0, 8);
  h.writeUInt32BE((o.length ?? o.data.length) >>> 0, 12);
  return Buffer.concat([h, o.data]);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n & 0xffff);
  return b;
}

/** INFO/GO data: name, then info requests. */
function infoData(name: string, requests: number[]): Buffer {
  return Buffer.concat([u32(Buffer.byteLength(name)), Buffer.from(name), u16(requests.length), ...requests.map(u16)]);
}

/** LIST_/SET_META_CONTEXT data: name, then queries. */
function metaData(name: string, queries: string[]): Buffer {
  return Buffer.concat([u32(Buffer.byteLength(name)), Buffer.from(name), u32(queries.length), ...queries.flatMap((q) => [u32(Buffer.byteLength(q)), Buffer.from(q)])]);
}

function randomBytes(rng: SeededRandom, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = rng.int(0, 255);
  return b;
}

// ---------------------------------------------------------------- handshake cases

const HANDSHAKE_MUTATIONS = ['client-flags', 'option-magic', 'option-code', 'length-short', 'length-long', 'length-huge', 'name-length', 'info-count', 'truncate', 'flip', 'insert', 'random', 'export-name'] as const;

/** One malformed handshake: the server's output must be a well-formed answer, or nothing more once it closed. */
export async function handshakeCase(target: FuzzTarget, rng: SeededRandom, out: Outcomes): Promise<string | undefined> {
  const name = rng.pick([target.writable, target.readOnly ?? target.writable, '', 'no-such-export']);
  const options: Option[] = [];
  for (let i = rng.int(0, 3); i > 0; i--) {
    const kind = rng.pick(['structured', 'list', 'info', 'set-meta', 'list-meta', 'starttls', 'unknown']);
    const o: Option = { magic: IHAVEOPT, code: 0, data: Buffer.alloc(0) };
    if (kind === 'structured') o.code = OPT.STRUCTURED_REPLY;
    else if (kind === 'list') o.code = OPT.LIST;
    else if (kind === 'info') Object.assign(o, { code: OPT.INFO, data: infoData(name, [0, 1, 2, 3].slice(0, rng.int(0, 4))) });
    else if (kind === 'set-meta') Object.assign(o, { code: OPT.SET_META_CONTEXT, data: metaData(name, ['base:allocation']) });
    else if (kind === 'list-meta') Object.assign(o, { code: OPT.LIST_META_CONTEXT, data: metaData(name, rng.next() < 0.5 ? [] : ['base:']) });
    else if (kind === 'starttls') o.code = OPT.STARTTLS;
    else Object.assign(o, { code: rng.int(12, 0xffff), data: randomBytes(rng, rng.int(0, 100)) });
    options.push(o);
  }
  const last = rng.pick(['go', 'go', 'export-name', 'abort', 'none']);
  if (last === 'go') options.push({ magic: IHAVEOPT, code: OPT.GO, data: infoData(name, [3]) });
  else if (last === 'export-name') options.push({ magic: IHAVEOPT, code: OPT.EXPORT_NAME, data: Buffer.from(name) });
  else if (last === 'abort') options.push({ magic: IHAVEOPT, code: OPT.ABORT, data: Buffer.alloc(0) });

  let clientFlags = rng.pick([3, 3, 1]);
  const mutations: string[] = [];
  for (let n = rng.int(1, 3); n > 0; n--) {
    const m = rng.pick(HANDSHAKE_MUTATIONS);
    mutations.push(m);
    const o = options.length > 0 ? rng.pick(options) : undefined;
    if (m === 'client-flags') clientFlags = rng.pick([0, 2, 4, 0x80, rng.int(0, 0xffffffff)]);
    else if (m === 'option-magic' && o) o.magic ^= 1n << BigInt(rng.int(0, 63));
    else if (m === 'option-code' && o) o.code = rng.pick([0, 4, 11, 12, rng.int(0, 0xffffffff)]);
    else if (m === 'length-short' && o) o.length = rng.int(0, Math.max(0, o.data.length - 1));
    else if (m === 'length-long' && o) o.length = o.data.length + rng.int(1, 64);
    else if (m === 'length-huge' && o) o.length = rng.pick([65 * 1024, 1 << 20, 0x7fffffff, 0xffffffff]);
    else if (m === 'name-length' && o && o.data.length >= 4) o.data.writeUInt32BE(rng.pick([0, 1, 255, 4096, 0xffffffff, rng.int(0, 1000)]), 0);
    else if (m === 'info-count' && o && (o.code === OPT.INFO || o.code === OPT.GO) && o.data.length >= 6) {
      const countAt = 4 + o.data.readUInt32BE(0);
      if (countAt + 2 <= o.data.length) o.data.writeUInt16BE(rng.int(0, 0xffff), countAt);
    }
    else if (m === 'export-name' && o) o.data = Buffer.concat([o.data, randomBytes(rng, rng.int(1, 20))]);
  }
  let stream = Buffer.concat([u32(clientFlags), ...options.map(encodeOption)]);
  if (mutations.includes('random')) stream = Buffer.concat([u32(clientFlags), randomBytes(rng, rng.int(1, 300))]);
  if (mutations.includes('insert')) {
    const at = rng.int(0, stream.length);
    stream = Buffer.concat([stream.subarray(0, at), randomBytes(rng, rng.int(1, 40)), stream.subarray(at)]);
  }
  if (mutations.includes('flip') && stream.length > 0) stream[rng.int(0, stream.length - 1)] ^= 1 << rng.int(0, 7);
  if (mutations.includes('truncate')) stream = stream.subarray(0, rng.int(0, stream.length));

  const peer = await Peer.connect(target.socket);
  try {
    if (!(await peer.until(18, 10_000))) return `no greeting (${peer.closed ? 'closed' : 'timed out'})`;
    await peer.sendInPieces(stream, rng);
    await peer.quiet(60, 5_000);
    const verdict = judgeHandshakeOutput(peer.received, target.size, out);
    out.add(peer.closed ? 'handshake: closed by the server' : 'handshake: left waiting, closed by the client');
    if (verdict) return `${verdict} (mutations ${mutations.join('+')})`;
    return undefined;
  } finally {
    peer.destroy();
    await target.settled();
  }
}

/** Undefined if `buf` is a well-formed server side of a fixed-newstyle handshake (a prefix of one); else why not. */
function judgeHandshakeOutput(buf: Buffer, size: number, out: Outcomes): string | undefined {
  if (buf.readBigUInt64BE(0) !== NBDMAGIC || buf.readBigUInt64BE(8) !== IHAVEOPT) return 'bad greeting';
  if ((buf.readUInt16BE(16) & ~3) !== 0) return `unknown handshake flags 0x${buf.readUInt16BE(16).toString(16)}`;
  let at = 18;
  while (at < buf.length) {
    if (buf.length - at >= 8 && buf.readBigUInt64BE(at) === REPLY_MAGIC) {
      if (buf.length - at < 20) return undefined; // the rest may still have been on its way
      const option = buf.readUInt32BE(at + 8);
      const type = buf.readUInt32BE(at + 12);
      const length = buf.readUInt32BE(at + 16);
      const known = type >= 0x80000000 ? REP_ERR_NAMES[type - 0x80000000] : REP_NAMES[type];
      if (!known) return `unknown reply type 0x${type.toString(16)}`;
      if (length > 64 * 1024 * 1024) return `reply of ${length} bytes`;
      if (buf.length - at - 20 < length) return undefined;
      const data = buf.subarray(at + 20, at + 20 + length);
      if (type >= 0x80000000 || type === REP.ACK) {
        if (type === REP.ACK && length !== 0) return 'ACK with data';
      }
      if (type === REP.INFO && data.length >= 2 && data.readUInt16BE(0) === 0) {
        if (data.length !== 12) return `INFO_EXPORT of ${data.length} bytes`;
        if (data.readBigUInt64BE(2) !== BigInt(size)) return `INFO_EXPORT size ${data.readBigUInt64BE(2)}`;
      }
      out.add(`handshake reply ${known}`);
      at += 20 + length;
      if (type === REP.ACK && option === OPT.GO) {
        out.add('handshake: reached transmission');
        return judgeTransmissionTail(buf.subarray(at));
      }
      continue;
    }
    // Not an option reply: the answer to EXPORT_NAME (size, flags, maybe 124 zeros).
    if (buf.length - at < 10) return undefined;
    if (buf.readBigUInt64BE(at) !== BigInt(size)) return `unexpected bytes at ${at}: ${buf.subarray(at, at + 16).toString('hex')}`;
    out.add('handshake: reached transmission');
    at += 10;
    const rest = buf.subarray(at);
    const zeros = rest.length >= 124 && rest.subarray(0, 124).equals(Buffer.alloc(124)) ? 124 : 0;
    return judgeTransmissionTail(rest.subarray(zeros));
  }
  return undefined;
}

/** After the handshake, only whole simple replies (to whatever junk followed) may come. */
function judgeTransmissionTail(buf: Buffer): string | undefined {
  for (let at = 0; at + 16 <= buf.length; at += 16) {
    if (buf.readUInt32BE(at) !== SIMPLE_REPLY_MAGIC) return `not a simple reply after the handshake: ${buf.subarray(at, at + 16).toString('hex')}`;
  }
  return undefined;
}

// ---------------------------------------------------------------- transmission cases

interface Req {
  flags: number;
  type: number;
  cookie: bigint;
  offset: bigint;
  length: number;
  payload?: Buffer;
}

function encodeRequest(r: Req, magic = REQUEST_MAGIC): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(magic >>> 0, 0);
  h.writeUInt16BE(r.flags & 0xffff, 4);
  h.writeUInt16BE(r.type & 0xffff, 6);
  h.writeBigUInt64BE(r.cookie, 8);
  h.writeBigUInt64BE(BigInt.asUintN(64, r.offset), 16);
  h.writeUInt32BE(r.length >>> 0, 24);
  return r.payload ? Buffer.concat([h, r.payload]) : h;
}

/** How a server must parse `stream`: the whole requests in it, and why it stops where it stops. */
function parseRequests(stream: Buffer): { requests: Req[]; end: 'complete' | 'bad-magic' | 'incomplete' | 'disc' } {
  const requests: Req[] = [];
  let at = 0;
  while (at < stream.length) {
    if (stream.length - at < 28) return { requests, end: 'incomplete' };
    if (stream.readUInt32BE(at) !== REQUEST_MAGIC) return { requests, end: 'bad-magic' };
    const r: Req = {
      flags: stream.readUInt16BE(at + 4),
      type: stream.readUInt16BE(at + 6),
      cookie: stream.readBigUInt64BE(at + 8),
      offset: stream.readBigUInt64BE(at + 16),
      length: stream.readUInt32BE(at + 24),
    };
    at += 28;
    if (r.type === CMD.WRITE) {
      if (stream.length - at < r.length) return { requests, end: 'incomplete' };
      r.payload = stream.subarray(at, at + r.length);
      at += r.length;
    }
    if (r.type === CMD.DISC) return { requests, end: 'disc' };
    requests.push(r);
  }
  return { requests, end: 'complete' };
}

interface Allowed {
  /** The protocol allows a success reply. */
  ok: boolean;
  /** Error replies the protocol allows (the errno of any defect the request has). */
  errnos: Set<number>;
}

/** What the protocol allows as the answer to `r`, given the export's transmission flags and size. */
function allowedAnswers(r: Req, tflags: number, size: number): Allowed {
  const hard = new Set<number>();
  let soft = false; // a defect the protocol leaves to the server (success or EINVAL)
  const known = r.type <= CMD.BLOCK_STATUS && r.type !== CMD.DISC;
  const writes = r.type === CMD.WRITE || r.type === CMD.TRIM || r.type === CMD.WRITE_ZEROES;
  const advertised =
    r.type === CMD.READ ||
    r.type === CMD.WRITE ||
    (r.type === CMD.FLUSH && (tflags & TFLAG.SEND_FLUSH) !== 0) ||
    (r.type === CMD.TRIM && (tflags & TFLAG.SEND_TRIM) !== 0) ||
    (r.type === CMD.WRITE_ZEROES && (tflags & TFLAG.SEND_WRITE_ZEROES) !== 0) ||
    (r.type === CMD.CACHE && (tflags & TFLAG.SEND_CACHE) !== 0);
  // BLOCK_STATUS: never a meta context negotiated here.
  if (!known || !advertised) hard.add(EINVAL);
  let flagsAllowed = 0;
  if (tflags & TFLAG.SEND_FUA) flagsAllowed |= CMD_FLAG.FUA;
  if (r.type === CMD.WRITE_ZEROES) flagsAllowed |= CMD_FLAG.NO_HOLE | (tflags & TFLAG.SEND_FAST_ZERO ? CMD_FLAG.FAST_ZERO : 0);
  if (r.type === CMD.READ && tflags & TFLAG.SEND_DF) flagsAllowed |= CMD_FLAG.DF;
  if (r.flags & ~flagsAllowed) hard.add(EINVAL);
  if (writes && tflags & TFLAG.READ_ONLY) hard.add(EPERM);
  if (r.type === CMD.FLUSH) {
    if (r.offset !== 0n || r.length !== 0) soft = true;
  } else {
    if ((r.type === CMD.READ || r.type === CMD.WRITE) && r.length > MAX_PAYLOAD) hard.add(EINVAL).add(EOVERFLOW);
    if (r.length === 0) soft = true;
    if (r.offset + BigInt(r.length) > BigInt(size)) hard.add(r.type === CMD.WRITE || r.type === CMD.WRITE_ZEROES ? ENOSPC : EINVAL);
  }
  // FAST_ZERO may always be refused with ENOTSUP.
  const errnos = new Set(hard);
  if (hard.size === 0 && soft) errnos.add(EINVAL);
  if (hard.size === 0 && r.type === CMD.WRITE_ZEROES && r.flags & CMD_FLAG.FAST_ZERO) errnos.add(95);
  return { ok: hard.size === 0, errnos };
}

const TX_MUTATIONS = ['magic', 'type', 'flags', 'offset-past-end', 'length-past-end', 'length-huge', 'length-zero', 'length-shift', 'flip', 'truncate', 'random-header'] as const;

/** A change a fuzzed connection may have made: `data` at `offset`, certainly (acknowledged) or possibly (no reply seen). */
interface Change {
  offset: number;
  data: Buffer;
  acknowledged: boolean;
  /** TRIM: the protocol leaves the bytes undefined; this device gives zeros, or the old bytes stay. */
  trim?: boolean;
}

/**
 * One transmission-phase case on a connection of its own: valid requests, some
 * mutated, sent (whole or in pieces, maybe cut off mid-request). Each reply is
 * checked against what the protocol allows for the request it answers; the
 * device's bytes are then checked against `model` and `model` is brought up to
 * date. Returns what was wrong, or undefined.
 */
export async function transmissionCase(target: FuzzTarget, rng: SeededRandom, model: Buffer, out: Outcomes): Promise<string | undefined> {
  const useReadOnly = target.readOnly !== undefined && rng.next() < 0.25;
  const exportName = useReadOnly ? target.readOnly! : target.writable;
  const peer = await Peer.connect(target.socket);
  const changes: Change[] = [];
  try {
    // A well-behaved handshake: flags, GO, replies up to the ACK.
    if (!(await peer.until(18, 10_000))) return 'no greeting';
    peer.write(Buffer.concat([u32(3), encodeOption({ magic: IHAVEOPT, code: OPT.GO, data: infoData(exportName, []) })]));
    let at = 18;
    let tflags = -1;
    for (;;) {
      if (!(await peer.until(at + 20, 10_000))) return 'GO not answered';
      const h = peer.received.subarray(at, at + 20);
      const length = h.readUInt32BE(16);
      if (!(await peer.until(at + 20 + length, 10_000))) return 'GO reply cut short';
      const data = peer.received.subarray(at + 20, at + 20 + length);
      at += 20 + length;
      const type = h.readUInt32BE(12);
      if (type === REP.INFO && data.readUInt16BE(0) === 0) tflags = data.readUInt16BE(10);
      else if (type === REP.ACK) break;
      else if (type >= 0x80000000) return `GO refused: 0x${type.toString(16)}`;
    }
    if (tflags < 0) return 'no INFO_EXPORT';

    // Valid requests inside [0, protectedFrom), then mutations.
    const count = rng.int(1, 5);
    const templates: Array<{ req: Req; magic: number }> = [];
    for (let i = 0; i < count; i++) {
      const type = rng.weighted({ read: 4, write: 4, flush: 1, trim: 1, zeroes: 1 });
      const length = rng.next() < 0.5 ? rng.int(1, 8) * 512 : rng.int(1, 20_000);
      const offset = rng.int(0, target.protectedFrom - length);
      const req: Req = { flags: 0, type: CMD.READ, cookie: BigInt(i + 1), offset: BigInt(offset), length };
      if (type === 'write') Object.assign(req, { type: CMD.WRITE, payload: randomBytes(rng, length), flags: rng.next() < 0.3 ? CMD_FLAG.FUA : 0 });
      else if (type === 'flush') Object.assign(req, { type: CMD.FLUSH, offset: 0n, length: 0 });
      else if (type === 'trim') req.type = CMD.TRIM;
      else if (type === 'zeroes') Object.assign(req, { type: CMD.WRITE_ZEROES, flags: rng.pick([0, CMD_FLAG.NO_HOLE, CMD_FLAG.FAST_ZERO]) });
      templates.push({ req, magic: REQUEST_MAGIC });
    }
    const mutations: string[] = [];
    let truncateAt: number | undefined;
    for (const t of templates) {
      if (rng.next() < 0.55) continue;
      const m = rng.pick(TX_MUTATIONS);
      mutations.push(m);
      const r = t.req;
      if (m === 'magic') t.magic ^= 1 << rng.int(0, 31);
      else if (m === 'type') r.type = rng.pick([CMD.CACHE, CMD.BLOCK_STATUS, 8, 9, 0x100, rng.int(0, 0xffff), CMD.READ, CMD.WRITE, CMD.TRIM]);
      else if (m === 'flags') r.flags = rng.pick([CMD_FLAG.DF, CMD_FLAG.REQ_ONE, CMD_FLAG.NO_HOLE, CMD_FLAG.FAST_ZERO, 0x20, 0x8000, rng.int(0, 0xffff)]);
      else if (m === 'offset-past-end') r.offset = rng.pick([BigInt(target.size), BigInt(target.size - 1), 2n ** 63n, 2n ** 64n - 1n, BigInt(rng.int(target.size, 2 * target.size))]);
      else if (m === 'length-past-end') r.length = target.size - Number(r.offset) + rng.int(1, 4096);
      else if (m === 'length-huge') r.length = rng.pick([MAX_PAYLOAD + 1, 64 * 1024 * 1024, 0x7fffffff, 0xffffffff]);
      else if (m === 'length-zero') r.length = 0;
      // The header claims a different length than the payload: the server frames by the header.
      else if (m === 'length-shift') r.length = Math.max(0, Math.min(target.protectedFrom - Number(r.offset), r.length + rng.int(-600, 600)));
      else if (m === 'flip') {
        // One bit of one field (not the cookie: replies are matched by it).
        const field = rng.pick(['flags', 'type', 'offset', 'length'] as const);
        if (field === 'flags') r.flags ^= 1 << rng.int(0, 15);
        else if (field === 'type') r.type ^= 1 << rng.int(0, 15);
        else if (field === 'offset') r.offset ^= 1n << BigInt(rng.int(0, 63));
        else r.length = (r.length ^ (1 << rng.int(0, 31))) >>> 0;
      }
      if (m === 'random-header') {
        r.flags = rng.int(0, 0xffff);
        r.type = rng.int(0, 0xffff);
        r.offset = BigInt.asUintN(64, BigInt(rng.int(0, 0xffffffff)) << BigInt(rng.int(0, 32)));
        r.length = rng.int(0, 0xffffffff);
        r.payload = undefined;
      }
      if (m === 'truncate') truncateAt ??= templates.indexOf(t);
      // A mutated request that is still a valid write stays out of the well-behaved client's range: moved past the end.
      const end = r.offset + BigInt(r.length);
      if ((r.type === CMD.WRITE || r.type === CMD.TRIM || r.type === CMD.WRITE_ZEROES) && end > BigInt(target.protectedFrom) && end <= BigInt(target.size)) r.offset = BigInt(target.size);
    }
    const pieces = templates.map((t) => encodeRequest(t.req, t.magic));
    if (truncateAt !== undefined) pieces[truncateAt] = pieces[truncateAt].subarray(0, rng.int(0, pieces[truncateAt].length - 1));
    let stream = Buffer.concat(pieces.slice(0, truncateAt === undefined ? pieces.length : truncateAt + 1));
    const disc = truncateAt === undefined && rng.next() < 0.3;
    if (disc) stream = Buffer.concat([stream, encodeRequest({ flags: 0, type: CMD.DISC, cookie: 999n, offset: 0n, length: 0 })]);
    const parsed = parseRequests(stream);
    const written = new Set<Req>();
    for (const r of parsed.requests) if (allowedAnswers(r, tflags, target.size).ok && (r.type === CMD.WRITE || r.type === CMD.TRIM || r.type === CMD.WRITE_ZEROES)) written.add(r);
    for (const r of written) {
      if (Number(r.offset) + r.length > target.protectedFrom) return `the fuzzer built a valid write into the protected range: ${r.offset}+${r.length}`;
    }

    await peer.sendInPieces(stream, rng);
    // Replies: each cookie once, each what the protocol allows.
    const byCookie = new Map(parsed.requests.map((r) => [r.cookie, r]));
    if (byCookie.size !== parsed.requests.length) return 'duplicate cookies in the parsed stream';
    const answered = new Map<Req, number>();
    let pos = at;
    while (answered.size < parsed.requests.length) {
      if (!(await peer.until(pos + 16, 10_000))) break;
      const h = peer.received.subarray(pos, pos + 16);
      if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) return `not a simple reply: ${h.toString('hex')}`;
      const error = h.readUInt32BE(4);
      const r = byCookie.get(h.readBigUInt64BE(8));
      if (!r) return `reply with unknown cookie ${h.readBigUInt64BE(8)}`;
      if (answered.has(r)) return `second reply to cookie ${r.cookie}`;
      answered.set(r, error);
      pos += 16;
      const allowed = allowedAnswers(r, tflags, target.size);
      const what = `type ${r.type} flags 0x${r.flags.toString(16)} ${r.offset}+${r.length}${useReadOnly ? ' read-only' : ''} (mutations ${mutations.join('+') || 'none'})`;
      if (error === 0 && !allowed.ok) return `success for a request the protocol refuses: ${what}`;
      if (error !== 0 && !allowed.errnos.has(error)) return `errno ${error} for ${what}; allowed ${[...allowed.errnos].join(',') || 'success only'}`;
      out.add(`reply ${ERRNO_NAMES[error] ?? error}`);
      if (error === 0 && r.type === CMD.READ && r.length > 0) {
        if (!(await peer.until(pos + r.length, 10_000))) return `READ data cut short: ${what}`;
        const data = peer.received.subarray(pos, pos + r.length);
        pos += r.length;
        // Compare with the model unless a write of this case overlaps it (order between them is the server's).
        const overlapped = [...written].some((w) => Number(w.offset) < Number(r.offset) + r.length && Number(r.offset) < Number(w.offset) + w.length);
        if (!overlapped && !data.equals(model.subarray(Number(r.offset), Number(r.offset) + r.length))) return `READ returned wrong data: ${what}`;
      }
    }
    const unanswered = parsed.requests.length - answered.size;
    if (unanswered > 0 && !peer.closed && parsed.end !== 'incomplete') return `${unanswered} requests never answered on an open connection`;
    out.add('requests parsed', parsed.requests.length);
    if (unanswered > 0) out.add('requests unanswered (connection closed)', unanswered);
    if (parsed.end === 'bad-magic') {
      if (!(await peer.closedWithin(10_000))) return 'bad request magic: the connection stays open';
      out.add('closed by the server: bad magic');
    } else if (parsed.end === 'disc') {
      if (!(await peer.closedWithin(10_000))) return 'DISC: the connection stays open';
      out.add('closed after DISC');
    } else if (peer.closed) out.add('closed by the server: other');
    else out.add(parsed.end === 'incomplete' ? 'client disconnected mid-request' : 'client disconnected');

    for (const r of written) {
      const ack = answered.get(r);
      if (ack !== undefined && ack !== 0) continue; // refused: changes nothing
      const data = r.type === CMD.WRITE ? r.payload! : Buffer.alloc(r.length);
      changes.push({ offset: Number(r.offset), data, acknowledged: ack === 0, trim: r.type === CMD.TRIM });
    }
  } finally {
    peer.destroy();
    await target.settled();
  }
  return reconcile(target, model, changes, out);
}

/** Checks the device against `model` plus `changes`, then makes `model` the device's bytes. */
async function reconcile(target: FuzzTarget, model: Buffer, changes: Change[], out: Outcomes): Promise<string | undefined> {
  const actual = await target.readDevice(0, target.protectedFrom);
  for (let at = 0; at < actual.length; at += 65536) {
    const end = Math.min(actual.length, at + 65536);
    if (actual.subarray(at, end).equals(model.subarray(at, end))) continue;
    for (let b = at; b < end; b++) {
      if (actual[b] === model[b]) continue;
      const explained = changes.some((c) => b >= c.offset && b < c.offset + c.data.length && c.data[b - c.offset] === actual[b]);
      if (!explained) return `device byte ${b} changed to ${actual[b]} (was ${model[b]}) by no write the protocol allows`;
    }
  }
  // An acknowledged write is there, except where another write of the same case overlaps it.
  for (const c of changes) {
    if (!c.acknowledged || c.trim) continue;
    for (let i = 0; i < c.data.length; i++) {
      const b = c.offset + i;
      if (actual[b] === c.data[i]) continue;
      if (changes.some((o) => o !== c && b >= o.offset && b < o.offset + o.data.length)) continue;
      return `acknowledged write at ${c.offset}+${c.data.length} missing at byte ${b}`;
    }
    out.add('acknowledged writes verified');
  }
  actual.copy(model, 0);
  return undefined;
}
