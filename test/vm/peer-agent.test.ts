// Host-tier check of the two-VM harness: the real peer agent (a process of its
// own, on loopback here instead of the link between two VMs) driven by its
// client, support/peer.ts. peer.vmtest runs the same pair across two kernels.
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { createServer } from 'node:http';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { httpPostOverUnix, Peer, PeerError, serveTcpToUnix } from './support/peer.js';

const agentJs = fileURLToPath(new URL('./support/peer-agent.js', import.meta.url));

/** Starts the agent on a free loopback port; resolves once its log names the port. */
async function startAgent(): Promise<{ child: ChildProcess; address: string; exited: Promise<number | null>; log: () => string }> {
  const child = spawn(process.execPath, [agentJs, '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  let out = '';
  const address = await new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /listening on (127\.0\.0\.1:\d+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.on('exit', () => reject(new Error(`the agent exited: ${out}`)));
  });
  return { child, address, exited, log: () => out };
}

/** A raw request, for what the client never sends. */
function raw(address: string, method: string, path: string, body: string): Promise<{ status: number; body: string }> {
  const [host, port] = address.split(':');
  return new Promise((resolve, reject) => {
    const req = request({ host, port: Number(port), method, path, agent: false }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

test('run, relay and stop through the real agent', async (t) => {
  const agent = await startAgent();
  t.teardown(() => agent.child.kill('SIGKILL'));
  const peer = await Peer.connect({ address: agent.address, timeoutMs: 10_000 });
  t.is(peer.localAddress, '127.0.0.1');
  t.regex(peer.bootId, /^[0-9a-f-]{36}$/);

  const r = await peer.run([process.execPath, '-e', 'process.stdout.write("o"); process.stderr.write("e"); process.exit(7)']);
  t.deepEqual([r.code, r.signal, r.stdout, r.stderr], [7, null, 'o', 'e']);
  t.is((await peer.runOk(['cat'], { input: 'in\n' })).stdout, 'in\n');
  t.is((await peer.runOk(['printenv', 'X_PEER'], { env: { X_PEER: 'v' } })).stdout, 'v\n');
  t.is((await peer.runOk(['pwd'], { cwd: '/' })).stdout, '/\n');
  const killed = await peer.run(['sleep', '30'], { timeoutMs: 200 });
  t.deepEqual([killed.code, killed.signal], [null, 'SIGKILL']);

  // a program that leaves a child holding its output (a daemon) still returns when it exits
  const start = Date.now();
  const daemon = await peer.run([process.execPath, '-e', 'require("child_process").spawn("sleep", ["5"], { stdio: "inherit", detached: true }).unref(); console.log("parent done")']);
  t.is(daemon.code, 0);
  t.is(daemon.stdout, 'parent done\n');
  t.true(Date.now() - start < 10_000);

  await t.throwsAsync(peer.runOk(['ls', '/no/such/path']), { message: /exited with code 2: ls: cannot access/ });
  const missing = await t.throwsAsync(peer.run(['no-such-program-here']), { instanceOf: PeerError });
  t.is(missing.status, 500);
  t.is((await t.throwsAsync(peer.run([]), { instanceOf: PeerError })).status, 400);
  const notJson = await raw(agent.address, 'POST', '/run', '{argv');
  t.deepEqual([notJson.status, JSON.parse(notJson.body)], [400, { error: 'body is not JSON' }]);
  t.is((await raw(agent.address, 'POST', '/nowhere', '{}')).status, 404);
  t.is((await raw(agent.address, 'POST', '/relay', '{"unixPath":"relative","host":"h","port":1}')).status, 400);

  // a secret given as such is in neither the agent's log nor runOk's error
  const SECRET = 'Peer-Secret-42';
  const leaked = await t.throwsAsync(peer.runOk(['ls', `/no/${SECRET}`], { secrets: [SECRET] }));
  t.false(leaked.message.includes(SECRET));
  t.regex(leaked.message, /ls "\/no\/\*{6}" exited with code 2/);

  // relay: a unix socket "there" reaches a unix-socket server "here", both ways
  const dir = mkdtempSync(join(tmpdir(), 'peer-agent-'));
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => res.end(`here got ${body}`));
  });
  await new Promise<void>((r) => server.listen(join(dir, 'here.sock'), r));
  const tcp = await serveTcpToUnix(0, join(dir, 'here.sock'));
  const there = await peer.relayToHere(join(dir, 'new/sub/there.sock'), tcp.port);
  for (const n of [1, 2]) {
    const viaRelay = await peer.runOk(httpPostOverUnix(there, '/', `ping ${n}`, process.execPath));
    t.is(viaRelay.stdout, `here got ping ${n}`);
  }
  await tcp.close();
  server.close();

  await peer.stop();
  t.is(await agent.exited, 0);
  t.regex(agent.log(), /run ls "\/no\/\*{6}" -> code 2/);
  t.false(agent.log().includes(SECRET));
});
