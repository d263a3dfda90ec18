// The whole executable entry point of a driver script:
//   <driver> '<methodCall>...</methodCall>'  one XML-RPC call; one methodResponse on stdout; exit 0 (faults too)
//   <driver> --json                          one JSON-RPC request or batch on stdin; the response on stdout
//   <driver> --serve <socket>                JSON-RPC server on a unix socket (see serve.ts) until SIGTERM/SIGINT
// stdout is the protocol channel and carries nothing but the response: once
// runDriverMain starts, console output and process.stdout.write go to stderr (which
// the toolstack captures), and the response is written through the writer
// captured before that. Limits: a child process given our fd 1, or a direct
// fs.writeSync(1, ...), still reaches stdout; lib code must not do that.
//
// The JSON-RPC modules are imported only in --json/--serve mode: a toolstack
// starts one process per XML-RPC call, and each module loaded costs start-up.
import { format } from 'node:util';
import { log } from '../log/smlog.js';
import type { Driver } from './driver.js';
import { type SMError, toSMError } from '../errors/sm-error.js';
import { MAX_REQUEST_BYTES } from './limits.js';
import { encodeFault } from './xmlrpc-codec.js';
import { runXmlRpc } from './xmlrpc-adapter.js';

const USAGE = `usage: <driver> '<methodCall XML>'   answer one SMAPIv1 XML-RPC call
       <driver> --json                 answer one JSON-RPC request (or batch) read from stdin
       <driver> --serve <socket path>  serve JSON-RPC on a unix socket (newline-delimited JSON)
`;

type Writer = (text: string) => Promise<void>;

let protocolWriter: Writer | undefined;

/**
 * Moves every other stdout writer to stderr; returns the only way left to
 * write stdout. Idempotent, so a second call still returns the real writer.
 */
export function claimStdout(): Writer {
  if (protocolWriter) return protocolWriter;
  const stdout = process.stdout;
  const realWrite = stdout.write.bind(stdout);
  const toStderr = (...args: unknown[]) => {
    process.stderr.write(format(...args) + '\n');
  };
  console.log = toStderr;
  console.info = toStderr;
  console.debug = toStderr;
  console.warn = toStderr;
  // Covers console.dir/table/group/time... and anything holding process.stdout.
  stdout.write = ((...args: Parameters<typeof process.stderr.write>) => process.stderr.write(...args)) as typeof stdout.write;
  protocolWriter = (text) =>
    new Promise<void>((resolve) => {
      if (text === '') return resolve();
      // Resolve once the bytes are handed to the OS (or stdout is gone).
      realWrite(text, () => resolve());
    });
  return protocolWriter;
}

/** Runs the driver as its executable; exits the process except in --serve mode. */
export async function runDriverMain(driver: Driver, argv: readonly string[] = process.argv.slice(2)): Promise<void> {
  const writeStdout = claimStdout();
  const [first, ...rest] = argv;
  if (first === '--help' || first === '-h') return usage(0);
  if (first === '--serve') return rest.length === 1 && rest[0] ? serve(driver, rest[0]) : usage(2);
  if (first === '--json') return rest.length === 0 ? answerJson(driver, writeStdout) : usage(2);
  if (argv.length !== 1 || first.startsWith('-')) return usage(2);
  return answerXml(driver, first, writeStdout);
}

function usage(code: number): never {
  process.stderr.write(USAGE);
  process.exit(code);
}

/** Exactly one response, even if something escapes the verb's promise. */
function respondOnce(writeStdout: Writer, fallback: (err: SMError) => string) {
  let sent = false;
  const finish = async (text: string) => {
    if (sent) return;
    sent = true;
    await writeStdout(text);
    process.exit(0);
  };
  const onStray = (err: unknown) => {
    log.logError(err, 'uncaught exception');
    void finish(fallback(toSMError(err)));
  };
  process.on('uncaughtException', onStray);
  process.on('unhandledRejection', onStray);
  return finish;
}

async function answerXml(driver: Driver, xml: string, writeStdout: Writer): Promise<void> {
  const finish = respondOnce(writeStdout, (err) => encodeFault(err.code, err.faultString));
  await finish(await runXmlRpc(driver, xml));
}

async function answerJson(driver: Driver, writeStdout: Writer): Promise<void> {
  const { runJsonRpc, smErrorResponse } = await import('./jsonrpc-adapter.js');
  const finish = respondOnce(writeStdout, (err) => JSON.stringify(smErrorResponse(null, err)) + '\n');
  const text = await readStdin(MAX_REQUEST_BYTES);
  const response =
    text === undefined
      ? JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32600, message: 'Request too large' } })
      : await runJsonRpc(driver, text);
  await finish(response ? response + '\n' : '');
}

/** All of stdin as UTF-8, or undefined once it exceeds `limit` bytes. */
async function readStdin(limit: number): Promise<string | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    size += (chunk as Buffer).length;
    if (size > limit) return undefined;
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function serve(driver: Driver, socketPath: string): Promise<void> {
  process.on('uncaughtException', (err) => {
    // State may be inconsistent: log, and let the supervisor restart us.
    log.logError(err, 'uncaught exception in socket server');
    process.exit(1);
  });
  const { serveUnixSocket } = await import('./serve.js');
  const server = await serveUnixSocket(driver, socketPath);
  const stop = () => void server.close().then(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}
