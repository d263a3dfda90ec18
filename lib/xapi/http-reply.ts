/**
 * Reads one HTTP/1.1 reply from the bytes received so far: the status, the
 * body (sized by Content-Length, chunked, or up to the close) and whether the
 * connection may carry the next call. The SM's XenAPI calls need nothing more
 * of HTTP, and a process per verb then does not pay for loading and warming
 * node's full HTTP client on its first call (docs/performance.md).
 */

export interface HttpReply {
  status: number;
  body: Buffer;
  /** The server keeps the connection open for another request. */
  keepAlive: boolean;
}

const HEADER_END = Buffer.from('\r\n\r\n');
/** A reply whose headers run longer than this is not one xapi sends. */
const MAX_HEADER_BYTES = 64 * 1024;

export class HttpReplyError extends Error {}

/**
 * The reply in `data`, or undefined while more bytes are needed. `closed`:
 * the server closed the connection, which ends a body sent without a length.
 */
export function parseHttpReply(data: Buffer, closed: boolean): HttpReply | undefined {
  const end = data.indexOf(HEADER_END);
  if (end < 0) {
    if (data.length > MAX_HEADER_BYTES) throw new HttpReplyError('reply headers too long');
    if (closed) throw new HttpReplyError(data.length === 0 ? 'connection closed before a reply' : 'connection closed inside the reply headers');
    return undefined;
  }
  const [statusLine, ...lines] = data.subarray(0, end).toString('latin1').split('\r\n');
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine ?? '');
  if (!status) throw new HttpReplyError(`not an HTTP reply: ${JSON.stringify(statusLine?.slice(0, 80))}`);
  const headers = new Map<string, string>();
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
  }
  const rest = data.subarray(end + HEADER_END.length);
  const http10 = statusLine!.startsWith('HTTP/1.0');
  const connection = (headers.get('connection') ?? '').toLowerCase();
  const keepAlive = http10 ? connection === 'keep-alive' : connection !== 'close';
  const reply = (body: Buffer, reusable: boolean): HttpReply => ({ status: Number(status[1]), body, keepAlive: reusable });

  if ((headers.get('transfer-encoding') ?? '').toLowerCase().includes('chunked')) {
    const body = dechunk(rest);
    if (body) return reply(body, keepAlive);
    if (closed) throw new HttpReplyError('connection closed inside a chunked reply');
    return undefined;
  }
  const length = headers.get('content-length');
  if (length !== undefined) {
    const n = Number(length);
    if (!Number.isSafeInteger(n) || n < 0) throw new HttpReplyError(`bad Content-Length ${JSON.stringify(length)}`);
    if (rest.length >= n) return reply(rest.subarray(0, n), keepAlive);
    if (closed) throw new HttpReplyError(`connection closed after ${rest.length} of ${n} body bytes`);
    return undefined;
  }
  // No length: the body runs to the close, and the connection is spent.
  return closed ? reply(rest, false) : undefined;
}

/** The body of a complete chunked encoding, or undefined while its last chunk has not arrived. */
function dechunk(data: Buffer): Buffer | undefined {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const lineEnd = data.indexOf('\r\n', at);
    if (lineEnd < 0) return undefined;
    const size = parseInt(data.subarray(at, lineEnd).toString('latin1').split(';')[0]!.trim(), 16);
    if (!Number.isSafeInteger(size) || size < 0) throw new HttpReplyError('bad chunk size');
    const start = lineEnd + 2;
    if (size === 0) {
      // The last chunk, then (optional trailers and) an empty line.
      return data.indexOf('\r\n\r\n', lineEnd) >= 0 || data.subarray(start, start + 2).toString('latin1') === '\r\n' ? Buffer.concat(parts) : undefined;
    }
    if (data.length < start + size + 2) return undefined;
    parts.push(data.subarray(start, start + size));
    at = start + size + 2;
  }
}
