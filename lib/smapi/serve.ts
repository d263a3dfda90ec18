// A long-running JSON-RPC server on a unix socket, so a caller can make many
// calls without starting a process for each.
//
// Framing: newline-delimited JSON. Each line a client sends is one JSON-RPC
// request or batch (JSON text never holds a raw newline, so no escaping is
// needed); the server answers each line with exactly one line of response,
// in order, except lines that hold only notifications, which get no line.
// Blank lines are ignored. Requests on one connection run one after another;
// open several connections for concurrent calls. A line longer than
// MAX_REQUEST_BYTES gets a -32600 error line and the connection is closed.
import fs from 'node:fs';
import net from 'node:net';
import { acceptsConnections } from '../util/socket-probe.js';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createJSONRPCErrorResponse, JSONRPCErrorCode, type JSONRPCResponse } from 'json-rpc-2.0';
import { log } from '../log/smlog.js';
import type { Driver } from './driver.js';
import { runJsonRpc } from './jsonrpc-adapter.js';
import { buildIdOf, callSettings, FORWARD_METHOD, NOT_SERVED, sameSettings, type ForwardParams } from './hand-off-protocol.js';
import { MAX_REQUEST_BYTES } from './limits.js';
import { runXmlRpc } from './xmlrpc-adapter.js';

export interface UnixSocketServer {
  readonly path: string;
  /** Stops accepting, ends open connections, removes the socket file. */
  close(): Promise<void>;
}

export async function serveUnixSocket(driver: Driver, socketPath: string): Promise<UnixSocketServer> {
  fs.mkdirSync(dirname(socketPath), { recursive: true });
  await removeStaleSocket(socketPath);
  const connections = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    connections.add(socket);
    socket.on('close', () => connections.delete(socket));
    serveConnection(driver, socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  // Storage verbs are root's business: nobody else may talk to the socket.
  fs.chmodSync(socketPath, 0o600);
  server.on('error', (err) => log.logError(err, `socket server ${socketPath}`));
  log.info(`serving JSON-RPC on ${socketPath}`);
  return {
    path: socketPath,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => {
          fs.rmSync(socketPath, { force: true });
          resolve();
        });
        for (const socket of connections) socket.destroy();
      }),
  };
}

function serveConnection(driver: Driver, socket: net.Socket): void {
  socket.setEncoding('utf8');
  let partial = ''; // text after the last newline seen
  let queue: Promise<void> = Promise.resolve();
  let refused = false;
  socket.on('data', (chunk: string) => {
    if (refused) return;
    const pieces = chunk.split('\n');
    pieces[0] = partial + pieces[0];
    partial = pieces.pop() ?? '';
    for (const line of pieces) {
      if (line.trim() === '') continue;
      // Chained so that answers leave in the order the lines came in.
      queue = queue.then(async () => {
        const response = (await answerHandOff(driver, line)) ?? (await runJsonRpc(driver, line));
        if (response && !socket.destroyed) socket.write(response + '\n');
      });
    }
    if (partial.length > MAX_REQUEST_BYTES) {
      refused = true;
      partial = '';
      const tooLarge = createJSONRPCErrorResponse(null, JSONRPCErrorCode.InvalidRequest, 'Request too large');
      queue = queue.then(() => {
        socket.end(JSON.stringify(tooLarge) + '\n');
      });
    }
  });
  socket.on('error', () => socket.destroy()); // a client going away is not our error
}

/** This server's build (hand-off-protocol.ts): the file its code was loaded from. */
const OWN_BUILD = (() => {
  try {
    return buildIdOf(fileURLToPath(import.meta.url));
  } catch {
    return 'unknown';
  }
})();

/**
 * A call a driver executable handed over (hand-off.ts): answered as that
 * executable would answer it, or refused before anything is done when this
 * server is another build or runs with other settings. Undefined: not a hand-off.
 */
async function answerHandOff(driver: Driver, line: string): Promise<string | undefined> {
  if (!line.includes(FORWARD_METHOD)) return undefined;
  let request: { id?: unknown; method?: unknown; params?: Partial<ForwardParams> };
  try {
    request = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (request?.method !== FORWARD_METHOD || typeof request.id !== 'number') return undefined;
  const { xml, settings, build } = request.params ?? {};
  const refuse = (why: string) => JSON.stringify(createJSONRPCErrorResponse(request.id as number, NOT_SERVED, `not served here: ${why}`));
  if (typeof xml !== 'string' || typeof build !== 'string' || settings === null || typeof settings !== 'object') return refuse('bad hand-off');
  if (build !== OWN_BUILD) return refuse(`this server is ${OWN_BUILD}`);
  const own = callSettings();
  if (!sameSettings(settings as Record<string, string>, own)) {
    const keys = [...new Set([...Object.keys(settings), ...Object.keys(own)])].filter((k) => (settings as Record<string, string>)[k] !== own[k]);
    // Names only: the call runs in-process and logs itself; this says why it was not handed off.
    log.info(`hand-off refused: other settings (${keys.sort().join(', ')}); the caller runs the call itself`);
    return refuse('other settings');
  }
  return JSON.stringify({ jsonrpc: '2.0', id: request.id, result: await runXmlRpc(driver, xml) });
}

/** A socket file left by a dead server is removed; a live one is an error. */
async function removeStaleSocket(socketPath: string): Promise<void> {
  if (!fs.existsSync(socketPath)) return;
  const alive = await acceptsConnections(socketPath);
  if (alive) throw new Error(`${socketPath}: another server is already listening`);
  fs.unlinkSync(socketPath);
}

let nextId = 1;

/**
 * Client helper: one call over a fresh connection. Resolves the JSON-RPC
 * response object (result or error); rejects only on transport failure.
 */
export function callUnixSocket(socketPath: string, method: string, params?: unknown): Promise<JSONRPCResponse> {
  const request = { jsonrpc: '2.0', id: nextId++, method, ...(params === undefined ? {} : { params }) };
  return sendUnixSocketLine(socketPath, JSON.stringify(request)).then((line) => JSON.parse(line) as JSONRPCResponse);
}

/** Sends one raw line, resolves the one response line (without its newline). */
export function sendUnixSocketLine(socketPath: string, line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    let received = '';
    socket.setEncoding('utf8');
    socket.once('connect', () => socket.write(line + '\n'));
    socket.on('data', (chunk: string) => {
      received += chunk;
      const newline = received.indexOf('\n');
      if (newline >= 0) {
        socket.end();
        resolve(received.slice(0, newline));
      }
    });
    socket.once('error', reject);
    socket.once('close', () => reject(new Error(`${socketPath}: connection closed without a response`)));
  });
}
