// The fast path of a driver executable. When a server of the same build is
// listening for this driver (`<driver> --serve $SM_ROOT/run/sm/serve/<name>.sock`),
// one argv XML-RPC call is handed to it and this process only relays the
// answer: a call then costs a Node start and a socket round trip instead of
// loading the driver. Without such a server (no socket, nobody listening, another
// build, other settings) the server refuses before doing anything and the
// executable answers the call itself, exactly as without a server.
// Node's own modules only: this runs before, and usually instead of, the driver.
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { buildIdOf, callSettings, FORWARD_METHOD, servedSocketPath, type ForwardParams } from './hand-off-protocol.js';

/** Answers the call through the server; false when the caller must answer it itself. */
export async function handOff(name: string, bundle: URL, argv: readonly string[] = process.argv.slice(2)): Promise<boolean> {
  if (argv.length !== 1 || argv[0]!.startsWith('-')) return false; // --json, --serve, usage: not ours
  let build: string;
  try {
    build = buildIdOf(fileURLToPath(bundle));
  } catch {
    return false;
  }
  const params: ForwardParams = { xml: argv[0]!, settings: callSettings(), build };
  const line = JSON.stringify({ jsonrpc: '2.0', id: 1, method: FORWARD_METHOD, params });
  const outcome = await exchange(servedSocketPath(name), line);
  if (outcome.kind === 'unreachable') return false;
  let text: string;
  if (outcome.kind === 'answer') {
    const response = parse(outcome.line);
    // An error is the server declining (NOT_SERVED, or a request too large for it): nothing ran.
    if (response?.error !== undefined) return false;
    text = typeof response?.result === 'string' ? response.result : await lostCallFault(`the server's answer was not a response: ${outcome.line.slice(0, 200)}`);
  } else {
    // The call was sent and may have run (a snapshot made, a VDI deleted): running it
    // again here could do it twice, so the toolstack gets a fault and SMlog has the rest.
    text = await lostCallFault(`the server ended during the call (${outcome.why}); whether the call took effect is in SMlog`);
  }
  await new Promise<void>((resolve) => process.stdout.write(text, () => resolve()));
  return true;
}

type Outcome = { kind: 'unreachable' } | { kind: 'answer'; line: string } | { kind: 'lost'; why: string };

/** One line out, one line back. Unreachable = the request never left (no socket, nobody listening). */
function exchange(socketPath: string, line: string): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = net.connect(socketPath);
    let sent = false;
    let received = '';
    socket.setEncoding('utf8');
    socket.once('connect', () => {
      sent = true;
      socket.write(line + '\n');
    });
    socket.on('data', (chunk: string) => {
      received += chunk;
      const newline = received.indexOf('\n');
      if (newline < 0) return;
      socket.destroy();
      resolve({ kind: 'answer', line: received.slice(0, newline) });
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(sent ? { kind: 'lost', why: err.code ?? err.message } : { kind: 'unreachable' }));
    socket.once('close', () => resolve(sent ? { kind: 'lost', why: 'connection closed' } : { kind: 'unreachable' }));
  });
}

function parse(line: string): { result?: unknown; error?: { code?: unknown } } | undefined {
  try {
    const value = JSON.parse(line) as unknown;
    return value !== null && typeof value === 'object' ? (value as { result?: unknown; error?: { code?: unknown } }) : undefined;
  } catch {
    return undefined;
  }
}

/** A GenericException (1200) fault; the encoder loads only on this rare path. */
async function lostCallFault(detail: string): Promise<string> {
  const [{ encodeFault }, { SMError }] = await Promise.all([import('./xmlrpc-codec.js'), import('../errors/sm-error.js')]);
  const err = new SMError('GenericException', detail);
  return encodeFault(err.code, err.faultString);
}
