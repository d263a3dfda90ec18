/**
 * Host-local mutual exclusion for an SR (or its GC). The lock is a bound
 * abstract unix socket named after the lock file's path: binding is atomic and
 * exclusive, and the kernel releases it the instant its holder dies, even by
 * SIGKILL, so no stale lock ever survives. A small file beside it names the
 * holder for operators. The socket also accepts `abort` requests (for the GC).
 */
import { createHash } from 'node:crypto';
import { mkdir, unlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { getLog } from '../log/index.js';
import { SMError } from '../errors/sm-error.js';
import { acceptsConnections } from '../util/socket-probe.js';
import { lockDir } from './paths.js';

export interface HeldLock {
  readonly name: string;
  /** Resolves when another process asks this holder to abort. */
  readonly abortRequested: Promise<void>;
  release(): Promise<void>;
}

function socketName(srUuid: string, name: string): string {
  const id = createHash('sha256').update(join(lockDir(srUuid), name)).digest('hex').slice(0, 32);
  return `\0xcp-sm-lock-${id}`;
}

function tryBind(address: string): Promise<net.Server | undefined> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE') resolve(undefined);
      else reject(err);
    });
    server.listen({ path: address }, () => resolve(server));
  });
}

export interface AcquireOptions {
  /** How long to wait for a busy lock; 0 = try once. */
  timeoutMs?: number;
  /** No holder file beside it (short-lived per-VDI locks: one a killed holder left would stay until that VDI's next use). */
  quiet?: boolean;
}

export async function acquireLock(srUuid: string, name: string, opts: AcquireOptions = {}): Promise<HeldLock | undefined> {
  const address = socketName(srUuid, name);
  const deadline = Date.now() + (opts.timeoutMs ?? 0);
  let delay = 5;
  for (;;) {
    const server = await tryBind(address);
    if (server) return holdLock(srUuid, name, server, opts.quiet === true);
    if (Date.now() >= deadline) return undefined;
    await new Promise((r) => setTimeout(r, Math.min(delay, Math.max(1, deadline - Date.now()))));
    delay = Math.min(delay * 2, 100);
  }
}

/** Takes the lock or throws LockErr (37) after the wait; a wait is logged, so lock contention shows in SMlog. */
export async function lockOrFail(srUuid: string, name: string, timeoutMs: number): Promise<HeldLock> {
  const free = await acquireLock(srUuid, name);
  if (free) return free;
  const started = Date.now();
  const held = await acquireLock(srUuid, name, { timeoutMs });
  if (!held) throw new SMError('LockErr', `${name} lock of SR ${srUuid} still busy after ${timeoutMs} ms`);
  getLog().debug(`${name} lock of SR ${srUuid} taken after waiting ${Date.now() - started} ms`);
  return held;
}

async function holdLock(srUuid: string, name: string, server: net.Server, quiet: boolean): Promise<HeldLock> {
  let onAbort!: () => void;
  const abortRequested = new Promise<void>((r) => (onAbort = r));
  server.on('connection', (sock) => {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      if (d.includes('abort')) {
        onAbort();
        sock.write(`ok ${process.pid}\n`);
      } else sock.write(`held ${process.pid}\n`);
    });
    sock.on('error', () => undefined);
  });
  server.unref(); // a held lock never keeps the process alive by itself
  const dir = lockDir(srUuid);
  const infoFile = join(dir, name);
  if (!quiet) {
    await mkdir(dir, { recursive: true });
    await writeFile(infoFile, `${process.pid} ${new Date().toISOString()}\n`).catch(() => undefined);
  }
  let released = false;
  return {
    name,
    abortRequested,
    async release() {
      if (released) return;
      released = true;
      if (!quiet) await unlink(infoFile).catch(() => undefined);
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Sends a request to a lock's holder; undefined when nobody holds it. */
export function askHolder(srUuid: string, name: string, request: 'abort' | 'ping', timeoutMs = 2000): Promise<string | undefined> {
  return new Promise((resolve) => {
    const sock = net.connect({ path: socketName(srUuid, name) });
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(undefined);
    }, timeoutMs);
    let reply = '';
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(`${request}\n`));
    sock.on('data', (d: string) => {
      reply += d;
      if (reply.includes('\n')) {
        clearTimeout(timer);
        sock.end();
        resolve(reply.trim());
      }
    });
    sock.on('error', () => {
      clearTimeout(timer);
      resolve(undefined);
    });
  });
}

/**
 * True when some process on this host holds the lock. A connect, not a ping:
 * the kernel accepts it for a bound socket even when the holder cannot answer
 * (stopped with SIGSTOP, busy), and refuses it at once when nobody is bound.
 */
export async function isLockHeld(srUuid: string, name: string): Promise<boolean> {
  return acceptsConnections(socketName(srUuid, name));
}
