// Real NBD clients (qemu-img, qemu-io, nbdinfo, nbdcopy, nbdsh, fio) against
// devices served from this process. Serial: they are processes on a small box.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test from 'ava';
import { FileDevice, hideOperations, MemoryDevice, ReadOnlyDevice } from '../../lib/nbd/index.js';
import { KiB, MiB, nbdUri, pattern, qemuUri, readAll, RecordingDevice, run, runOk, withServer } from './helpers.js';

test.serial('qemu-img info, convert from the export, compare', async (t) => {
  const device = new MemoryDevice(8 * MiB);
  await device.write(pattern(1 * MiB, 1), 1 * MiB);
  await device.write(pattern(64 * KiB, 2), 6 * MiB + 4 * KiB);
  await withServer({}, async ({ server, socket, dir }) => {
    server.addExport('vdi-1', device);
    const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', qemuUri(socket, 'vdi-1')]));
    t.is(info['virtual-size'], 8 * MiB);
    const out = join(dir, 'out.raw');
    await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', nbdUri(socket, 'vdi-1'), out]);
    t.true((await readFile(out)).equals(await readAll(device)));
    t.is((await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', qemuUri(socket, 'vdi-1'), out])).code, 0);
    const changed = await readFile(out);
    changed[6 * MiB + 5 * KiB] ^= 0xff;
    await writeFile(out, changed);
    t.is((await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', qemuUri(socket, 'vdi-1'), out])).code, 1);
  });
});

test.serial('qemu-img convert onto the export writes every byte (zero runs included)', async (t) => {
  const device = new MemoryDevice(8 * MiB);
  await device.write(Buffer.alloc(8 * MiB, 0x5a), 0); // stale data the zero runs must clear
  await withServer({}, async ({ server, socket, dir }) => {
    server.addExport('vdi-1', device);
    const src = Buffer.concat([pattern(3 * MiB, 3), Buffer.alloc(2 * MiB), pattern(3 * MiB, 4)]);
    await writeFile(join(dir, 'src.raw'), src);
    await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', join(dir, 'src.raw'), qemuUri(socket, 'vdi-1')]);
    t.true((await readAll(device)).equals(src));
  });
});

test.serial('qemu-io: write -P / read -P, FUA emulated as write then flush, write -z, flush', async (t) => {
  const trace: string[] = [];
  const memory = new MemoryDevice(4 * MiB);
  await memory.write(Buffer.alloc(4 * MiB, 0x77), 0);
  const device = new RecordingDevice(memory, 'dev', trace);
  await withServer({}, async ({ server, socket }) => {
    server.addExport('d', device);
    const out = await runOk('qemu-io', [
      '-f', 'raw',
      '-c', 'write -P 0xab 0 1M',
      '-c', 'write -f -P 0xcd 1M 64k',
      '-c', 'read -P 0xab 0 1M',
      '-c', 'read -P 0xcd 1M 64k',
      '-c', 'write -z 2M 64k',
      '-c', 'read -P 0 2M 64k',
      '-c', 'flush',
      nbdUri(socket, 'd'),
    ]);
    t.notRegex(out, /Pattern verification failed|error/i);
  });
  const bytes = await readAll(memory);
  t.true(bytes.subarray(0, MiB).equals(Buffer.alloc(MiB, 0xab)));
  t.true(bytes.subarray(MiB, MiB + 64 * KiB).equals(Buffer.alloc(64 * KiB, 0xcd)));
  t.true(bytes.subarray(2 * MiB, 2 * MiB + 64 * KiB).equals(Buffer.alloc(64 * KiB)));
  t.true(bytes.subarray(2 * MiB + 64 * KiB).equals(Buffer.alloc(2 * MiB - 64 * KiB, 0x77)));
  // The FUA write reached the device as a plain write followed by a flush (it has no native FUA).
  const fuaWrite = trace.indexOf('dev<write:65536');
  t.true(fuaWrite >= 0, trace.join(' '));
  t.is(trace[fuaWrite + 1], 'dev>flush');
  t.true(trace.includes('dev>zero'));
});

test.serial('nbdinfo: flags, block sizes, description, and --map of a device with known holes', async (t) => {
  const device = new MemoryDevice(4 * MiB, { chunkSize: 64 * KiB });
  await device.write(pattern(128 * KiB, 5), 1 * MiB);
  await device.write(pattern(64 * KiB, 6), 3 * MiB);
  await withServer({}, async ({ server, socket }) => {
    server.addExport('d', device, { description: 'test disk' });
    server.addExport('ro', new ReadOnlyDevice(device));
    const u = nbdUri(socket, 'd');
    const info = JSON.parse(await runOk('nbdinfo', ['--json', u]));
    const e = info.exports[0];
    t.is(e['export-size'], 4 * MiB);
    t.is(e.description, 'test disk');
    t.is(e.block_size_minimum, 1);
    t.is(e.block_size_preferred, 4096);
    t.is(e.block_size_maximum, 32 * MiB);
    t.like(e, { can_flush: true, can_fua: true, can_trim: true, can_zero: true, can_fast_zero: true, can_multi_conn: true, can_df: true, can_cache: false, is_read_only: false });
    const map = (await runOk('nbdinfo', ['--map', u]))
      .trim()
      .split('\n')
      .map((l) => l.trim().split(/\s+/).slice(0, 3).map(Number));
    t.deepEqual(map, [
      [0, MiB, 3],
      [MiB, 128 * KiB, 0],
      [MiB + 128 * KiB, 2 * MiB - 128 * KiB, 3],
      [3 * MiB, 64 * KiB, 0],
      [3 * MiB + 64 * KiB, MiB - 64 * KiB, 3],
    ]);
    t.is((await run('nbdinfo', ['--can', 'flush', u])).code, 0);
    t.is((await run('nbdinfo', ['--can', 'write', u])).code, 0);
    t.is((await run('nbdinfo', ['--is', 'read-only', nbdUri(socket, 'ro')])).code, 0);
    t.is((await run('nbdinfo', ['--can', 'trim', nbdUri(socket, 'ro')])).code, 2);
    // A device without zero(): WRITE_ZEROES is still offered (emulated), FAST_ZERO is not.
    const noZero = new MemoryDevice(MiB);
    hideOperations(noZero, ['zero']);
    server.addExport('nozero', noZero);
    t.is((await run('nbdinfo', ['--can', 'zero', nbdUri(socket, 'nozero')])).code, 0);
    t.is((await run('nbdinfo', ['--can', 'fast-zero', nbdUri(socket, 'nozero')])).code, 2);
    const list = await runOk('nbdinfo', ['--list', '--json', `nbd+unix://?socket=${socket}`]);
    t.deepEqual(JSON.parse(list).exports.map((x: { 'export-name': string }) => x['export-name']).sort(), ['d', 'nozero', 'ro']);
    t.not((await run('nbdinfo', [nbdUri(socket, 'missing')])).code, 0);
  });
});

test.serial('read-only export: qemu-io reads, writes fail with a client error and change nothing', async (t) => {
  const device = new MemoryDevice(MiB);
  await device.write(Buffer.alloc(MiB, 0x42), 0);
  await withServer({}, async ({ server, socket }) => {
    server.addExport('ro', new ReadOnlyDevice(device));
    await runOk('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x42 0 1M', nbdUri(socket, 'ro')]);
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 4k', nbdUri(socket, 'ro')]);
    t.regex(w.stdout + w.stderr, /read-only|Operation not permitted|permission/i);
  });
  t.true((await readAll(device)).equals(Buffer.alloc(MiB, 0x42)));
});

test.serial('nbdcopy both ways with 4 connections (multi-conn)', async (t) => {
  const device = new MemoryDevice(16 * MiB);
  await withServer({}, async ({ server, socket, dir }) => {
    server.addExport('d', device);
    const src = Buffer.concat([pattern(5 * MiB, 7), Buffer.alloc(3 * MiB), pattern(8 * MiB, 8)]);
    await writeFile(join(dir, 'src.raw'), src);
    await runOk('nbdcopy', ['--flush', '-C', '4', join(dir, 'src.raw'), nbdUri(socket, 'd')]);
    t.true((await readAll(device)).equals(src));
    t.true(device.calls.flush > 0);
    await device.write(pattern(MiB, 9), 10 * MiB);
    await runOk('nbdcopy', ['-C', '4', nbdUri(socket, 'd'), join(dir, 'out.raw')]);
    t.true((await readFile(join(dir, 'out.raw'))).equals(await readAll(device)));
  });
});

test.serial('fio nbd engine: random writes at iodepth 16, verified with crc32c', async (t) => {
  const device = new MemoryDevice(32 * MiB);
  await withServer({}, async ({ server, socket, dir }) => {
    server.addExport('d', device);
    const out = await runOk(
      'fio',
      [
        '--name=rw', '--ioengine=nbd', `--uri=${nbdUri(socket, 'd')}`, '--rw=randwrite', '--bs=4k', '--iodepth=16',
        '--size=16M', '--verify=crc32c', '--do_verify=1', '--end_fsync=1', '--output-format=json',
      ],
      60_000,
      dir, // fio leaves a verify state file in its working directory
    );
    const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
    t.is(job.error, 0);
    t.is(job.write.io_bytes, 16 * MiB);
    t.true(job.read.io_bytes >= 16 * MiB); // the verify pass read everything back
  });
  t.true(device.calls.write >= 4096);
});

test.serial('multi-conn: a write flushed on one connection is read on another (file device per connection)', async (t) => {
  await withServer({}, async ({ server, socket, dir }) => {
    const path = join(dir, 'disk.raw');
    await writeFile(path, Buffer.alloc(2 * MiB));
    const opened: FileDevice[] = [];
    server.addExport('f', async () => {
      const d = await FileDevice.open(path);
      opened.push(d);
      return d;
    });
    const script = [
      'import nbd',
      `u = "${nbdUri(socket, 'f')}"`,
      'a = nbd.NBD(); a.connect_uri(u)',
      'b = nbd.NBD(); b.connect_uri(u)',
      'assert a.can_multi_conn() and b.can_multi_conn()',
      'data = bytes(range(256)) * 256',
      'a.pwrite(data, 65536)',
      'a.flush()',
      'assert b.pread(len(data), 65536) == data',
      'b.pwrite(b"\\xee" * 4096, 0, nbd.CMD_FLAG_FUA)',
      'assert a.pread(4096, 0) == b"\\xee" * 4096',
      'a.shutdown(); b.shutdown()',
      'print("ok")',
    ].join('\n');
    const out = await runOk('nbdsh', ['-c', script]);
    t.is(out.trim(), 'ok');
    const file = await readFile(path);
    t.true(file.subarray(0, 4096).equals(Buffer.alloc(4096, 0xee)));
    t.is(file[65536 + 255], 255);
    t.true(opened.length >= 2);
  });
});
