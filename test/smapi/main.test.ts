// runDriverMain end to end: the echo driver executable, as a toolstack runs it.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { SM_ERRORS, callUnixSocket, encodeFault, encodeMethodCall, encodeResponse, parseMethodResponse } from '../../lib/smapi/index.js';
import { acceptsConnections } from '../../lib/util/socket-probe.js';
import { REQUEST_BASE, useTempSmRoot } from './helpers.js';

useTempSmRoot();

const DRIVER = fileURLToPath(new URL('./fixtures/echo-driver.js', import.meta.url));

/** Runs the driver executable to completion: exit status (null if killed), stdout, stderr. */
function runDriver(args: string[], input?: string) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'sm-main-'));
  const child = spawn(process.execPath, [DRIVER, ...args], {
    cwd: os.tmpdir(), // drivers must work from any directory
    env: { ...process.env, SM_ROOT: root, ORIGINATOR: 'SM' },
    timeout: 30_000,
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  child.stdin.end(input ?? '');
  return new Promise<{ status: number | null; stdout: string; stderr: string; root: string }>((resolve) =>
    child.once('close', (status) => resolve({ status, stdout, stderr, root })),
  );
}

test('stdout holds exactly one methodResponse even when the verb prints garbage', async (t) => {
  const params = { ...REQUEST_BASE, vdi_uuid: 'v1', args: ['1024', 'my disk'] };
  const run = await runDriver([encodeMethodCall('vdi_create', [params])]);
  t.is(run.status, 0);
  t.is(run.stdout, encodeResponse({ uuid: 'v1', location: 'my disk' }));
  for (const garbage of ['console.log', 'console.info', 'console.debug', 'console.warn', 'console.dir', 'console.table', 'process.stdout.write']) {
    t.true(run.stderr.includes(garbage), garbage);
  }
  const smlog = fs.readFileSync(path.join(run.root, 'var/log/SMlog'), 'utf8');
  t.regex(smlog, / SM: \[\d+\] vdi_create \{/);
  t.false(smlog.includes('session-secret'));
});

test('faults are printed on stdout with exit code 0', async (t) => {
  const run = await runDriver([encodeMethodCall('vdi_delete', [REQUEST_BASE])]);
  t.is(run.status, 0);
  t.is(run.stdout, encodeFault(24, `${SM_ERRORS.VDIInUse.description} [opterr=attached to vm-1]`));
});

test('stderr carries probe hints while stdout carries only the reply', async (t) => {
  const run = await runDriver([encodeMethodCall('sr_probe', [REQUEST_BASE])]);
  t.is(run.status, 0);
  t.is(run.stdout, encodeResponse('<SRlist><SR><UUID>sr-1</UUID></SR></SRlist>'));
  t.true(run.stderr.includes('hint on stderr'));
});

test('malformed XML and XXE attempts give a fault, exit 0, and read nothing', async (t) => {
  for (const xml of [
    '<methodCall><oops',
    '<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]><methodCall><methodName>vdi_generate_config</methodName><params><param><value>&x;</value></param></params></methodCall>',
  ]) {
    const run = await runDriver([xml]);
    t.is(run.status, 0);
    const reply = parseMethodResponse(run.stdout);
    t.like(reply, { kind: 'fault', faultCode: 1200 });
    t.false(run.stdout.includes('root:'));
  }
});

test('an exception escaping the verb still gives exactly one fault, promptly', async (t) => {
  // The verb would wait 60 s; runDriver's 30 s timeout would kill it (status null).
  const run = await runDriver([encodeMethodCall('vdi_clone', [REQUEST_BASE])]);
  t.is(run.status, 0);
  t.is(run.stdout, encodeFault(1200, `${SM_ERRORS.GenericException.description} [opterr=stray callback]`));
});

test('usage errors go to stderr with exit code 2', async (t) => {
  for (const args of [[], ['a', 'b'], ['--serve'], ['--bogus']]) {
    const run = await runDriver(args);
    t.is(run.status, 2, JSON.stringify(args));
    t.is(run.stdout, '');
    t.regex(run.stderr, /usage:/);
  }
});

test('--json answers one request or batch from stdin', async (t) => {
  const one = await runDriver(['--json'], JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'vdi_create', params: { ...REQUEST_BASE, args: ['1', 'j'] } }));
  t.is(one.status, 0);
  t.is(one.stdout, JSON.stringify({ jsonrpc: '2.0', id: 7, result: { uuid: 'new-vdi', location: 'j' } }) + '\n');
  const batch = await runDriver(['--json'], JSON.stringify([
    { jsonrpc: '2.0', id: 1, method: 'sr_scan', params: REQUEST_BASE },
    { jsonrpc: '2.0', id: 2, method: 'vdi_delete', params: REQUEST_BASE },
  ]));
  const parsed = JSON.parse(batch.stdout);
  t.deepEqual(parsed[0].result, [{ uuid: 'vdi-1', virtual_size: '1024' }]);
  t.is(parsed[1].error.code, 24);
  const bad = await runDriver(['--json'], '{oops');
  t.is(bad.status, 0);
  t.is(JSON.parse(bad.stdout).error.code, -32700);
});

test('--serve answers over the socket until SIGTERM', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sm-serve-'));
  const socketPath = path.join(dir, 'sm.sock');
  const child = spawn(process.execPath, [DRIVER, '--serve', socketPath], {
    env: { ...process.env, SM_ROOT: dir },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  child.stdout.on('data', (chunk) => (stdout += chunk));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  // Until it listens: the socket file appears at bind(), a moment before listen(), and a loaded host stretches both.
  for (let i = 0; i < 400 && !(await acceptsConnections(socketPath)); i++) await new Promise((r) => setTimeout(r, 50));
  try {
    for (let i = 0; i < 5; i++) {
      const response = await callUnixSocket(socketPath, 'vdi_create', { ...REQUEST_BASE, args: ['1', `s${i}`] });
      t.deepEqual(response.result, { uuid: 'new-vdi', location: `s${i}` });
    }
  } finally {
    child.kill('SIGTERM');
  }
  t.is(await exited, 0);
  t.is(stdout, ''); // garbage went to stderr here too
  t.false(fs.existsSync(socketPath));
});
