// The HTTP/1.1 reply reader of the XenAPI client (lib/xapi/http-reply.ts), fed
// the bytes a server sends, whole and cut at every position.
import test from 'ava';
import { HttpReplyError, parseHttpReply } from '../../lib/xapi/http-reply.js';

const body = '<?xml version="1.0"?><methodResponse>…</methodResponse>';
const bodyBytes = Buffer.from(body, 'utf8');

const sized = Buffer.from(`HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: ${bodyBytes.length}\r\n\r\n${body}`, 'utf8');
const chunked = Buffer.concat([
  Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n'),
  Buffer.from(`${(10).toString(16)}\r\n`),
  bodyBytes.subarray(0, 10),
  Buffer.from(`\r\n${(bodyBytes.length - 10).toString(16)};ext=1\r\n`),
  bodyBytes.subarray(10),
  Buffer.from('\r\n0\r\n\r\n'),
]);

for (const [name, bytes] of [['Content-Length', sized], ['chunked', chunked]] as const) {
  test(`${name}: the body once complete, nothing before`, (t) => {
    for (let cut = 0; cut < bytes.length; cut++) t.is(parseHttpReply(bytes.subarray(0, cut), false), undefined, `incomplete at ${cut}`);
    const reply = parseHttpReply(bytes, false)!;
    t.is(reply.status, 200);
    t.true(reply.body.equals(bodyBytes));
    t.true(reply.keepAlive);
  });

  test(`${name}: closed before the end is an error, not a short body`, (t) => {
    t.throws(() => parseHttpReply(bytes.subarray(0, bytes.length - 3), true), { instanceOf: HttpReplyError });
  });
}

test('no length: the body runs to the close, and the connection is not reused', (t) => {
  const bytes = Buffer.from(`HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n${body}`, 'utf8');
  t.is(parseHttpReply(bytes, false), undefined);
  const reply = parseHttpReply(bytes, true)!;
  t.true(reply.body.equals(bodyBytes));
  t.false(reply.keepAlive);
});

test('Connection: close and HTTP/1.0 without keep-alive end the connection; a status other than 200 is read', (t) => {
  t.false(parseHttpReply(Buffer.from('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n'), false)!.keepAlive);
  t.false(parseHttpReply(Buffer.from('HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n'), false)!.keepAlive);
  t.is(parseHttpReply(Buffer.from('HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n'), false)!.status, 500);
});

test('not HTTP, a bad length, nothing at all: errors', (t) => {
  t.throws(() => parseHttpReply(Buffer.from('SSH-2.0-OpenSSH\r\n\r\n'), false), { instanceOf: HttpReplyError });
  t.throws(() => parseHttpReply(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n'), false), { instanceOf: HttpReplyError });
  t.throws(() => parseHttpReply(Buffer.alloc(0), true), { instanceOf: HttpReplyError, message: /closed before a reply/ });
});
