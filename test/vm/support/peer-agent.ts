/**
 * The peer agent: runs in the second VM of the tier (guest-peer.sh) and does
 * what the first VM asks, over HTTP/1.1 + JSON on the private link between the
 * two guests (qemu socket netdev, nothing else on it). Test-only code: it runs
 * any command it is sent, which is the point, and is safe only on that link.
 *
 *   GET  /ping   -> {bootId, hostname}
 *   POST /run    {argv, env?, cwd?, input?, timeoutMs?, secrets?} -> {code, signal, stdout, stderr, ms}
 *                argv is spawned as given (no shell); env is merged over the agent's;
 *                secrets are masked in the log.
 *   POST /relay  {unixPath, host, port} -> {unixPath}: listens on unixPath here
 *                and pipes each connection to TCP host:port (the first VM), both ways.
 *   POST /stop   -> {stopping: true}, then closes everything and exits 0.
 * Errors answer 4xx/5xx with {error}.
 *
 * Usage: node peer-agent.js ADDRESS:PORT (PORT 0: any; the first log line names it)
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import { pipeBothWays, showArgv } from './peer-protocol.js';
import type { PeerRunRequest, PeerRunResult, RelayRequest } from './peer-protocol.js';

/** A request the agent refuses (HTTP 400, or 404 for no such route) rather than a failure while doing it (500). */
class BadRequest extends Error {
  constructor(
    message: string,
    readonly status = 400,
  ) {
    super(message);
  }
}

const MAX_BODY = 16 * 1024 * 1024;
/** After the child exits, how long its output may still arrive: a daemon it left behind may hold the pipes forever. */
const OUTPUT_GRACE_MS = 500;

function log(msg: string): void {
  process.stdout.write(`${new Date().toISOString()} peer-agent: ${msg}\n`);
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > MAX_BODY) throw new BadRequest(`body over ${MAX_BODY} bytes`);
    chunks.push(c);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  let body: unknown;
  try {
    body = text === '' ? {} : JSON.parse(text);
  } catch {
    throw new BadRequest('body is not JSON');
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new BadRequest('body is not a JSON object');
  return body as Record<string, unknown>;
}

function checkRun(b: Record<string, unknown>): PeerRunRequest {
  const { argv, env, cwd, input, timeoutMs, secrets } = b;
  if (!Array.isArray(argv) || argv.length === 0 || !argv.every((a) => typeof a === 'string')) throw new BadRequest('argv must be a non-empty array of strings');
  if (env !== undefined && (env === null || typeof env !== 'object' || !Object.values(env).every((v) => typeof v === 'string'))) {
    throw new BadRequest('env must map names to strings');
  }
  if (cwd !== undefined && typeof cwd !== 'string') throw new BadRequest('cwd must be a string');
  if (input !== undefined && typeof input !== 'string') throw new BadRequest('input must be a string');
  if (timeoutMs !== undefined && !(typeof timeoutMs === 'number' && timeoutMs > 0)) throw new BadRequest('timeoutMs must be a positive number');
  if (secrets !== undefined && !(Array.isArray(secrets) && secrets.every((x) => typeof x === 'string'))) throw new BadRequest('secrets must be an array of strings');
  return { argv, env: env as Record<string, string> | undefined, cwd, input, timeoutMs, secrets };
}

/** Runs argv to its end; a program that cannot start rejects (the caller answers 500). */
function run(r: PeerRunRequest): Promise<PeerRunResult> {
  const start = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(r.argv[0]!, r.argv.slice(1), { env: { ...process.env, ...r.env }, cwd: r.cwd, stdio: 'pipe' });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.stdin.on('error', () => {}); // a program that never reads its input
    child.stdin.end(r.input ?? '');
    const timer = r.timeoutMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), r.timeoutMs);
    let settled = false;
    const finish = (code: number | null, signal: NodeJS.Signals | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.stdout.destroy();
      child.stderr.destroy();
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), ms: Date.now() - start });
    };
    child.on('error', (e) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(new Error(`${showArgv(r.argv, r.secrets)}: ${e.message}`));
    });
    child.on('close', finish);
    child.on('exit', (code, signal) => setTimeout(() => finish(code, signal), OUTPUT_GRACE_MS).unref());
  });
}

const relays: NetServer[] = [];
const piped = new Set<Socket>();

function checkRelay(b: Record<string, unknown>): RelayRequest {
  const { unixPath, host, port } = b;
  if (typeof unixPath !== 'string' || !unixPath.startsWith('/')) throw new BadRequest('unixPath must be an absolute path');
  if (typeof host !== 'string' || host === '') throw new BadRequest('host must be a string');
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) throw new BadRequest('port must be a TCP port');
  return { unixPath, host, port };
}

/** Both ends of each relayed connection, so that stop can end them. */
function track(...sockets: Socket[]): void {
  for (const s of sockets) {
    piped.add(s);
    s.on('close', () => piped.delete(s));
  }
}

async function relay(r: RelayRequest): Promise<{ unixPath: string }> {
  await mkdir(dirname(r.unixPath), { recursive: true });
  await rm(r.unixPath, { force: true }); // a socket file left by an earlier run refuses the bind
  const server = createNetServer((c) => {
    const toFirstVm = connect(r.port, r.host);
    track(c, toFirstVm);
    pipeBothWays(c, toFirstVm);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(r.unixPath, () => resolve());
  });
  relays.push(server);
  return { unixPath: r.unixPath };
}

function answer(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function stop(server: ReturnType<typeof createServer>): void {
  for (const r of relays) r.close();
  for (const s of piped) s.destroy();
  server.close(() => process.exit(0));
  server.closeAllConnections();
}

function main(): void {
  const [host, portText] = (process.argv[2] ?? '').split(':');
  const port = Number(portText);
  if (!host || portText === '' || !Number.isInteger(port) || port < 0) {
    process.stderr.write('usage: peer-agent ADDRESS:PORT\n');
    process.exit(2);
  }
  const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  const server = createServer((req, res) => {
    const route = `${req.method} ${req.url}`;
    (async () => {
      if (route === 'GET /ping') return answer(res, 200, { bootId, hostname: hostname() });
      if (req.method !== 'POST') throw new BadRequest(`no route ${route}`, 404);
      const body = await readJson(req);
      switch (req.url) {
        case '/run': {
          const r = checkRun(body);
          const result = await run(r);
          log(`run ${showArgv(r.argv, r.secrets)} -> ${result.signal ?? `code ${result.code}`} (${result.ms} ms)`);
          return answer(res, 200, result);
        }
        case '/relay': {
          const r = checkRelay(body);
          const result = await relay(r);
          log(`relay ${r.unixPath} -> ${r.host}:${r.port}`);
          return answer(res, 200, result);
        }
        case '/stop':
          log('stop');
          res.on('finish', () => stop(server));
          return answer(res, 200, { stopping: true });
        default:
          throw new BadRequest(`no route ${route}`, 404);
      }
    })().catch((e: Error) => {
      log(`${route}: ${e.message}`);
      if (!res.headersSent) answer(res, e instanceof BadRequest ? e.status : 500, { error: e.message });
    });
  });
  // port 0: the system picks one; the log line says which
  server.listen(port, host, () => log(`listening on ${host}:${(server.address() as AddressInfo).port}, boot ${bootId}`));
}

main();
