/**
 * One XenAPI call: XML-RPC over HTTP/1.1 POST `/` on xapi's unix socket, as
 * the established SM's `xapi_local()` sends it. The body is built and read by
 * the project's XML-RPC codec; the reply struct `{Status, Value}` or
 * `{Status, ErrorDescription}` becomes the value or an XapiFailure.
 */
import { encodeMethodCall, parseMethodResponse } from '../smapi/xmlrpc-codec.js';
import type { XmlRpcValue } from '../smapi/xmlrpc-value.js';
import { XapiFailure, XapiTransportError } from './errors.js';

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

/** One kept-alive connection for the calls of a process (a verb makes a dozen); idle, it never holds the process. */
let agent: import('node:http').Agent | undefined;

async function post(socketPath: string, method: string, body: Buffer, headers: CallHeaders): Promise<string> {
  // Loaded on the first call only: a standalone driver process never pays for the HTTP client.
  const http = await import('node:http');
  agent ??= new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    return await postOnce(http.request, socketPath, method, body, headers);
  } catch (err) {
    // xapi closed the idle connection as this call went out on it: nothing was read, so send it again once.
    if (!(err instanceof StaleConnection)) throw err;
    return postOnce(http.request, socketPath, method, body, headers);
  }
}

/** An idle connection xapi closed; a call on it never reached xapi. */
class StaleConnection extends Error {}

function postOnce(request: typeof import('node:http').request, socketPath: string, method: string, body: Buffer, headers: CallHeaders): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method: 'POST',
        path: '/',
        headers: {
          Host: 'localhost',
          'Content-Type': 'text/xml',
          'Content-Length': body.length,
          'User-Agent': 'xcp-sm',
          // xapi records who made the call; the established client sends the same header.
          originator: process.env.ORIGINATOR || 'SM',
          ...(headers.subtaskOf ? { 'Subtask-of': headers.subtaskOf } : {}),
        },
        agent,
        timeout: CALL_TIMEOUT_MS,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_REPLY_BYTES) req.destroy(new Error(`reply larger than ${MAX_REPLY_BYTES} bytes`));
          else chunks.push(c);
        });
        res.on('end', () => {
          if (res.statusCode !== 200) reject(new XapiTransportError(method, `HTTP ${res.statusCode}`));
          else resolve(Buffer.concat(chunks).toString('utf8'));
        });
        res.on('error', (err) => reject(new XapiTransportError(method, err.message)));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no reply within ${CALL_TIMEOUT_MS} ms`)));
    req.on('error', (err) => {
      const code = (err as NodeJS.ErrnoException).code;
      if (req.reusedSocket && (code === 'ECONNRESET' || code === 'EPIPE')) reject(new StaleConnection(err.message));
      else reject(new XapiTransportError(method, err.message));
    });
    req.end(body);
  });
}
