#!/usr/bin/env node
/**
 * sm-datapath: serves the active VDIs of one SR on this host over NBD.
 *   sm-datapath --sr <sr_uuid> --control <socket>
 * Started detached by the first vdi_activate of the SR on this host; takes
 * requests on the control socket (lib/datapath/control.ts); exits once it
 * serves nothing. The control socket is the lock: a second process finding a
 * live one there exits at once. Logs to SMlog as `SM`, every line starting
 * with `datapath`.
 */
import fs from 'node:fs';
import net from 'node:net';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';
import { initLog, type SMLog } from '../log/index.js';
import type { ControlReply, ControlRequest } from './control.js';
import { Mutex } from './locks.js';
import { DatapathService } from './service.js';

/** Started but never asked to serve (its starter died): gone after this long. */
const IDLE_EXIT_MS = 30_000;

async function bindControl(path: string): Promise<net.Server | undefined> {
  fs.mkdirSync(dirname(path), { recursive: true });
  if (fs.existsSync(path)) {
    const live = await new Promise<boolean>((resolve) => {
      const probe = net.connect(path);
      probe.once('connect', () => {
        probe.destroy();
        resolve(true);
      });
      probe.once('error', () => resolve(false));
    });
    if (live) return undefined;
    fs.rmSync(path, { force: true });
  }
  const server = net.createServer();
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') return undefined; // lost a start-up race
    throw err;
  }
  fs.chmodSync(path, 0o600);
  return server;
}

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { sr: { type: 'string' }, control: { type: 'string' } }, strict: true });
  if (!values.sr || !values.control) {
    process.stderr.write('usage: sm-datapath --sr <sr_uuid> --control <socket>\n');
    return 2;
  }
  const log: SMLog = initLog('SM');
  const controlPath = values.control;
  const control = await bindControl(controlPath);
  if (!control) {
    log.info(`datapath of SR ${values.sr}: another one already listens on ${controlPath}, exiting`);
    return 0;
  }
  const service = new DatapathService(dirname(controlPath), log);
  const mutex = new Mutex();
  log.info(`datapath of SR ${values.sr} started (pid ${process.pid}, control ${controlPath})`);

  // No new control connections from now on (the open ones still get their replies; close()'s callback would wait for them).
  const stopListening = () => {
    control.close();
    fs.rmSync(controlPath, { force: true });
  };
  let exiting = false;
  let done!: (code: number) => void;
  const finished = new Promise<number>((r) => (done = r));
  const shutDown = async (why: string, code = 0) => {
    if (exiting) return;
    exiting = true;
    clearTimeout(idle);
    stopListening();
    await mutex.run(() => service.stopAll());
    log.info(`datapath of SR ${values.sr} exiting: ${why}`);
    done(code);
  };
  const idle = setTimeout(() => void shutDown('never asked to serve'), IDLE_EXIT_MS);

  const handle = async (req: ControlRequest): Promise<ControlReply> => {
    const ok = { ok: true as const, pid: process.pid };
    switch (req.op) {
      case 'list':
        return { ...ok, served: service.list() };
      case 'serve':
        clearTimeout(idle);
        await service.serve(req.vdi, req.path, req.socket, req.writable, req.cbtlog);
        return ok;
      case 'stop': {
        const wasServed = await service.stop(req.vdi);
        // Empty: the control socket goes before the reply, so the next start never finds this process half gone.
        if (service.size === 0) {
          exiting = true;
          stopListening();
          return { ...ok, wasServed, exiting: true };
        }
        return { ...ok, wasServed };
      }
      case 'pause': {
        const steps = await service.pause(req.vdi, req.durable !== false);
        return { ...ok, steps, ...(req.token === undefined ? {} : { written: await service.writtenSince(req.vdi, req.token) }) };
      }
      case 'unpause':
        return { ...ok, pausedMs: await service.unpause(req.vdi, req.path, req.scrubbed === true, req.cbtlog, req.reuse) };
      case 'track-start':
        return { ...ok, ...(await service.trackWrites(req.vdi)) };
      case 'dirty-since':
        return { ...ok, written: await service.writtenSince(req.vdi, req.token, req.flush === true) };
      case 'track-stop':
        service.untrackWrites(req.vdi);
        return ok;
      default:
        throw new Error(`unknown request ${JSON.stringify((req as { op?: unknown }).op)}`);
    }
  };

  control.on('connection', (socket) => {
    socket.setEncoding('utf8');
    socket.on('error', () => {});
    let buffered = '';
    let queue = Promise.resolve();
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        queue = queue.then(async () => {
          let reply: ControlReply;
          let req: ControlRequest | undefined;
          try {
            req = JSON.parse(line) as ControlRequest;
            const r = req;
            reply = r.op === 'list' ? await handle(r) : await mutex.run(() => handle(r));
          } catch (err) {
            const message = err instanceof Error ? err.message : String(err);
            log.error(`datapath: ${req?.op ?? 'request'}${req && 'vdi' in req ? ` of VDI ${req.vdi}` : ''} failed: ${message}`);
            reply = { ok: false, pid: process.pid, error: message };
          }
          if (!socket.destroyed) socket.write(JSON.stringify(reply) + '\n');
          if (reply.ok && reply.exiting) {
            socket.end();
            log.info(`datapath of SR ${values.sr} exiting: nothing left to serve`);
            done(0);
          }
        });
      }
    });
  });

  process.on('SIGTERM', () => void shutDown('SIGTERM'));
  process.on('SIGINT', () => void shutDown('SIGINT'));
  process.on('uncaughtException', (err) => {
    log.error(`datapath of SR ${values.sr}: ${err.stack ?? err.message}`);
    void shutDown('internal error', 1);
  });
  return finished;
}

process.exitCode = await main(process.argv.slice(2));
// Sockets of clients that are slow to go must not keep a finished datapath alive.
setImmediate(() => process.exit());
