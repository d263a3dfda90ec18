// Choosing a /dev/nbdN and reaching a VDI's socket, on directories laid out
// as /dev and /sys are (the host kernel here has no nbd module; the VM tier
// runs the real one: test/vm/kernel-nbd.vmtest.ts).
import test from 'ava';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectablePath, connectNbd, freeNbdDevice, kernelNbdMissing, nbdIndex } from '../../lib/os/nbd-client.js';
import { toolSearchPath } from '../../lib/os/run.js';
import { recorder } from './helpers.js';

function fakeHost(devices: number, connected: number[]) {
  const root = mkdtempSync(join(tmpdir(), 'nbd-host-'));
  const dev = join(root, 'dev');
  const sys = join(root, 'sys');
  mkdirSync(dev);
  for (let n = 0; n < devices; n++) {
    writeFileSync(join(dev, `nbd${n}`), '');
    mkdirSync(join(sys, 'block', `nbd${n}`), { recursive: true });
    // the kernel creates the pid file on connect and removes it on disconnect
    if (connected.includes(n)) writeFileSync(join(sys, 'block', `nbd${n}`, 'pid'), '1234\n');
  }
  return { root, dev, sys, cleanup: () => rmSync(root, { recursive: true, force: true }) };
}

test('the first device neither connected nor handed to another attached VDI', (t) => {
  const h = fakeHost(4, [0, 2]);
  t.teardown(h.cleanup);
  t.is(freeNbdDevice(new Set(), h.dev, h.sys), join(h.dev, 'nbd1'));
  t.is(freeNbdDevice(new Set([join(h.dev, 'nbd1')]), h.dev, h.sys), join(h.dev, 'nbd3'));
  t.is(freeNbdDevice(new Set([join(h.dev, 'nbd1'), join(h.dev, 'nbd3')]), h.dev, h.sys), undefined, 'none left');
});

test('tools are looked up in root\'s sbin folders too (a toolstack may start us with a short PATH)', (t) => {
  t.deepEqual(toolSearchPath('/opt/bin').slice(0, 3), ['/opt/bin', '/usr/local/sbin', '/usr/sbin']);
  t.true(toolSearchPath('/usr/bin:/bin').includes('/sbin'));
});

test('why the kernel path is unavailable: no nbd0, or no nbd-client', (t) => {
  const h = fakeHost(0, []);
  t.teardown(h.cleanup);
  t.regex(kernelNbdMissing(h.dev) ?? '', /nbd module not loaded/);
  writeFileSync(join(h.dev, 'nbd0'), '');
  const empty = join(h.root, 'bin');
  mkdirSync(empty);
  t.is(kernelNbdMissing(h.dev, [empty]), 'nbd-client is not installed');
  writeFileSync(join(empty, 'nbd-client'), '');
  t.is(kernelNbdMissing(h.dev, [empty]), undefined);
});

test('nbdIndex reads /dev/nbdN only', (t) => {
  t.is(nbdIndex('/dev/nbd12'), 12);
  t.is(nbdIndex('/dev/nbd'), undefined);
  t.is(nbdIndex('/dev/sda'), undefined);
});

test('nbd-client gets the socket link where it fits a socket address, its target where it does not', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'nbd-sock-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const target = join(root, 'nbd1.0');
  writeFileSync(target, '');
  const short = join(root, 'l');
  symlinkSync(target, short);
  const deep = join(root, 'x'.repeat(60), 'y'.repeat(60));
  mkdirSync(deep, { recursive: true });
  const long = join(deep, 'link');
  symlinkSync(target, long);
  t.is(await connectablePath(short), short);
  t.is(await connectablePath(long), target);
  const rec = recorder(() => undefined);
  await connectNbd(long, '/dev/nbd3', 'vdi-1', { run: rec.run });
  t.deepEqual(rec.argv(), [['nbd-client', '-unix', target, '/dev/nbd3', '-timeout', '90', '-persist', '-name', 'vdi-1']]);
});
