import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { callUnixSocket, sendUnixSocketLine, serveUnixSocket } from '../../lib/smapi/index.js';
import { testDriver } from './fixtures/test-driver.js';
import { REQUEST_BASE, useTempSmRoot } from './helpers.js';

useTempSmRoot();

const socketPathFor = () => path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'sm-sock-')), 'driver.sock');

test('many sequential and concurrent calls on one long-running server', async (t) => {
  const server = await serveUnixSocket(testDriver, socketPathFor());
  try {
    t.is(fs.statSync(server.path).mode & 0o777, 0o600);
    for (let i = 0; i < 20; i++) {
      const response = await callUnixSocket(server.path, 'vdi_create', { ...REQUEST_BASE, args: ['1', `seq-${i}`] });
      t.deepEqual(response.result, { uuid: 'new-vdi', location: `seq-${i}` });
    }
    const concurrent = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        callUnixSocket(server.path, i % 5 === 0 ? 'vdi_delete' : 'vdi_create', { ...REQUEST_BASE, args: ['1', `par-${i}`] }),
      ),
    );
    concurrent.forEach((response, i) => {
      if (i % 5 === 0) t.is(response.error?.code, 24);
      else t.deepEqual(response.result, { uuid: 'new-vdi', location: `par-${i}` });
    });
    const info = await callUnixSocket(server.path, 'sr_get_driver_info');
    t.is(info.result.name, 'Test');
  } finally {
    await server.close();
  }
  t.false(fs.existsSync(server.path));
});

test('one connection: one response line per request line, in order; batches and bad JSON', async (t) => {
  const server = await serveUnixSocket(testDriver, socketPathFor());
  try {
    const socket = net.connect(server.path);
    socket.setEncoding('utf8');
    const lines: string[] = [];
    let buffer = '';
    const gotLines = new Promise<void>((resolve) => {
      socket.on('data', (chunk: string) => {
        buffer += chunk;
        let nl: number;
        while ((nl = buffer.indexOf('\n')) >= 0) {
          lines.push(buffer.slice(0, nl));
          buffer = buffer.slice(nl + 1);
          if (lines.length === 4) resolve();
        }
      });
    });
    const req = (id: number, method: string, label = '') =>
      JSON.stringify({ jsonrpc: '2.0', id, method, params: { ...REQUEST_BASE, args: ['1', label] } });
    // vdi_snapshot is slow (50 ms): later, faster lines must still answer after it.
    socket.write(
      [
        req(1, 'vdi_snapshot'),
        '',
        JSON.stringify({ jsonrpc: '2.0', method: 'sr_attach', params: REQUEST_BASE }), // notification: no line
        '{not json',
        `[${req(2, 'vdi_create', 'b1')},${req(3, 'vdi_create', 'b2')}]`,
        req(4, 'vdi_create', 'last'),
      ].join('\n') + '\n',
    );
    await gotLines;
    socket.end();
    const parsed = lines.map((line) => JSON.parse(line));
    t.is(parsed[0].id, 1);
    t.is(parsed[1].error.code, -32700);
    t.deepEqual(
      parsed[2].map((r: { id: number }) => r.id),
      [2, 3],
    );
    t.deepEqual(parsed[3].result, { uuid: 'new-vdi', location: 'last' });
  } finally {
    await server.close();
  }
});

test('a stale socket file is replaced; a live server is not', async (t) => {
  const socketPath = socketPathFor();
  const first = await serveUnixSocket(testDriver, socketPath);
  await t.throwsAsync(serveUnixSocket(testDriver, socketPath), { message: /already listening/ });
  await first.close();
  // A server killed with SIGKILL leaves its socket file behind.
  const child = spawn(process.execPath, [
    '-e',
    `require('net').createServer().listen(${JSON.stringify(socketPath)}, () => console.log('up'))`,
  ]);
  await new Promise((resolve) => child.stdout.once('data', resolve));
  child.kill('SIGKILL');
  await new Promise((resolve) => child.once('exit', resolve));
  t.true(fs.existsSync(socketPath));
  const second = await serveUnixSocket(testDriver, socketPath);
  try {
    const line = await sendUnixSocketLine(socketPath, JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'sr_attach', params: REQUEST_BASE }));
    t.deepEqual(JSON.parse(line), { jsonrpc: '2.0', id: 1, result: null });
  } finally {
    await second.close();
  }
});
