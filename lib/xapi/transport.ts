/**
 * One XenAPI call: XML-RPC over HTTP/1.1 POST `/` on xapi's unix socket, as
 * the established SM's `xapi_local()` sends it. The body is built and read by
 * the project's XML-RPC codec; the reply struct `{Status, Value}` or
 * `{Status, ErrorDescription}` becomes the value or an XapiFailure.
 */
import { createConnection, type Socket } from 'node:net';
import { encodeMethodCall, parseMethodResponse } from '../smapi/xmlrpc-codec.js';
import type { XmlRpcValue } from '../smapi/xmlrpc-value.js';
import { XapiFailure, XapiTransportError } from './errors.js';
import { parseHttpReply, type HttpReply } from './http-reply.js';

export interface CallHeaders {
  /** The task this call is a part of (the request's `subtask_of`). */
  subtaskOf?: string;
}

/** Bounds a call that xapi never answers: the verb fails instead of hanging the toolstack's call. */
const CALL_TIMEOUT_MS = Number(process.env.SM_XAPI_TIMEOUT_MS ?? 120_000);
/** A reply larger than this is not one the SM asked for. */
const MAX_REPLY_BYTES = 64 * 1024 * 1024;

export async function callXapi(socketPath: string, method: string, params: unknown[], headers: CallHeaders = {}): Promise<XmlRpcValue> {
  const body = Buffer.from(encodeMethodCall(method, params), 'utf8');
  const text = await post(socketPath, method, body, headers);
  let reply;
  try {
    reply = parseMethodResponse(text);
  } catch (err) {
    throw new XapiTransportError(method, `reply is not XML-RPC: ${(err as Error).message}`);
  }
  if (reply.kind === 'fault') throw new XapiTransportError(method, `XML-RPC fault ${reply.faultCode}: ${reply.faultString}`);
  return resultOf(method, reply.value);
}

function resultOf(method: string, value: XmlRpcValue): XmlRpcValue {
  const v = value as { Status?: unknown; Value?: XmlRpcValue; ErrorDescription?: unknown };
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new XapiTransportError(method, 'reply is not a struct');
  if (v.Status === 'Success') return v.Value ?? '';
  if (v.Status === 'Failure') {
    const desc = Array.isArray(v.ErrorDescription) ? v.ErrorDescription.map(String) : [];
    throw new XapiFailure(desc[0] ?? 'INTERNAL_ERROR', desc.slice(1), method);
  }
  throw new XapiTransportError(method, `reply Status is ${JSON.stringify(v.Status)}`);
}

/**
 * Connections a process keeps open between its calls, per socket path, so
 * that a verb's calls share them; idle, they never hold the process, and one
 * xapi closes while idle simply leaves the list.
 */
const idleBySocket = new Map<string, Set<Socket>>();
/** At most this many calls go out at once (a verb sends its independent calls together). */
const MAX_CONNECTIONS = 4;
let busy = 0;
const waiting: Array<() => void> = [];

async function post(socketPath: string, method: string, body: Buffer, headers: CallHeaders): Promise<string> {
  const request = Buffer.concat([Buffer.from(requestHead(body.length, headers), 'latin1'), body]);
  await slot();
  try {
    const opened = takeIdle(socketPath) ?? (await takeAhead(socketPath));
    if (opened) {
      try {
        return await exchange(opened, true, method, request, socketPath);
      } catch (err) {
        // xapi closed the connection, opened before, as this call went out on it: nothing was read, so send it again once.
        if (!(err instanceof StaleConnection)) throw err;
      }
    }
    return await exchange(await connect(socketPath, method), false, method, request, socketPath);
  } finally {
    release();
  }
}

/** Connections opened ahead (connectAhead), not yet taken by a call. */
const aheadBySocket = new Map<string, Promise<Socket | undefined>>();

/**
 * Opens a connection for the calls to come, unless one is idle or on its way
 * already: a verb's first call then finds it open (a driver is a fresh process
 * per call). The first call takes it even while it is still connecting; if no
 * call comes, it waits idle like any other. One that cannot be made is simply
 * not kept: the call then connects itself and reports why it cannot.
 */
export function connectAhead(socketPath: string): void {
  if (idleBySocket.get(socketPath)?.size || aheadBySocket.has(socketPath)) return;
  const ahead = connect(socketPath, 'connect').catch(() => undefined);
  aheadBySocket.set(socketPath, ahead);
  void ahead.then((socket) => {
    if (aheadBySocket.get(socketPath) !== ahead) return; // a call took it
    aheadBySocket.delete(socketPath);
    if (socket) keepIdle(socket, socketPath);
  });
}

/** The connection opened ahead, once it is open; undefined when there is none or it failed. */
async function takeAhead(socketPath: string): Promise<Socket | undefined> {
  const ahead = aheadBySocket.get(socketPath);
  if (!ahead) return undefined;
  aheadBySocket.delete(socketPath);
  const socket = await ahead;
  return socket && !socket.destroyed ? socket : undefined;
}

function slot(): Promise<void> {
  if (busy < MAX_CONNECTIONS) {
    busy++;
    return Promise.resolve();
  }
  return new Promise((resolve) => waiting.push(resolve));
}

function release(): void {
  const next = waiting.shift();
  if (next) next();
  else busy--;
}

function takeIdle(socketPath: string): Socket | undefined {
  const idle = idleBySocket.get(socketPath);
  for (const socket of idle ?? []) {
    idle!.delete(socket);
    socket.removeAllListeners('close');
    socket.removeAllListeners('error');
    if (!socket.destroyed && !socket.readableEnded) return socket;
  }
  return undefined;
}

function keepIdle(socket: Socket, socketPath: string): void {
  let idle = idleBySocket.get(socketPath);
  if (!idle) idleBySocket.set(socketPath, (idle = new Set()));
  socket.unref();
  socket.on('error', () => undefined); // a connection xapi drops while idle is simply not reused
  socket.on('close', () => idle!.delete(socket));
  idle.add(socket);
}

function requestHead(length: number, headers: CallHeaders): string {
  const lines = [
    'POST / HTTP/1.1',
    'Host: localhost',
    'Content-Type: text/xml',
    `Content-Length: ${length}`,
    'User-Agent: xcp-sm',
    // xapi records who made the call; the established client sends the same header.
    `originator: ${oneLine(process.env.ORIGINATOR || 'SM')}`,
    ...(headers.subtaskOf ? [`Subtask-of: ${oneLine(headers.subtaskOf)}`] : []),
  ];
  return lines.join('\r\n') + '\r\n\r\n';
}

/** A header value never ends the header early. */
const oneLine = (v: string) => v.replace(/[\r\n]/g, ' ');

/** An idle connection xapi closed; a call on it never reached xapi. */
class StaleConnection extends Error {}

function connect(socketPath: string, method: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath);
    const failed = (err: Error) => reject(new XapiTransportError(method, err.message));
    socket.once('error', failed);
    socket.once('connect', () => {
      socket.off('error', failed);
      resolve(socket);
    });
  });
}

/**
 * One request and its reply on a connection, which goes back to the idle
 * ones if the reply allows it. `reused`: the connection was opened before
 * this call (it carried one, or was opened ahead), so nothing at all coming
 * back means xapi had closed it while idle.
 */
function exchange(socket: Socket, reused: boolean, method: string, request: Buffer, socketPath: string): Promise<string> {
  socket.ref();
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const finish = (err: Error | undefined, reply?: HttpReply) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.off('data', onData).off('end', onEnd).off('close', onEnd).off('error', onError);
      if (err || !reply) {
        socket.destroy();
        reject(err);
        return;
      }
      if (reply.keepAlive && !socket.destroyed && !socket.readableEnded) keepIdle(socket, socketPath);
      else socket.destroy();
      if (reply.status !== 200) reject(new XapiTransportError(method, `HTTP ${reply.status}`));
      else resolve(reply.body.toString('utf8'));
    };
    const attempt = (closed: boolean) => {
      try {
        const reply = parseHttpReply(Buffer.concat(chunks), closed);
        if (reply) finish(undefined, reply);
      } catch (err) {
        const stale = closed && size === 0 && reused;
        finish(stale ? new StaleConnection((err as Error).message) : new XapiTransportError(method, (err as Error).message));
      }
    };
    const onData = (c: Buffer) => {
      size += c.length;
      if (size > MAX_REPLY_BYTES) return finish(new XapiTransportError(method, `reply larger than ${MAX_REPLY_BYTES} bytes`));
      chunks.push(c);
      attempt(false);
    };
    const onEnd = () => attempt(true);
    const onError = (err: NodeJS.ErrnoException) => {
      const stale = reused && size === 0 && (err.code === 'ECONNRESET' || err.code === 'EPIPE');
      finish(stale ? new StaleConnection(err.message) : new XapiTransportError(method, err.message));
    };
    const timer = setTimeout(() => finish(new XapiTransportError(method, `no reply within ${CALL_TIMEOUT_MS} ms`)), CALL_TIMEOUT_MS);
    socket.on('data', onData).on('end', onEnd).on('close', onEnd).on('error', onError);
    socket.write(request);
  });
}
