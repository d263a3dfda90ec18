// The CBT log codec: blktap's layout byte for byte, the bit orders (the log's
// LSB first, xapi's base64 MSB first), refusals of damaged logs, the walk
// along a chain of logs, and (when blktap's `cbt-util` is on PATH) the tool
// itself reading and writing our logs.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import {
  allSet,
  changedBetween,
  changedRanges,
  CBT_BLOCK_SIZE,
  CbtLogError,
  createLog,
  decodeLog,
  encodeLog,
  fromXapiBase64,
  mergeBitmap,
  newLog,
  NIL_UUID,
  readLog,
  setBlocks,
  toXapiBase64,
  writeLog,
  type CbtLog,
} from '../../lib/cbt/index.js';

const P = '11111111-2222-3333-4444-555555555555';
const C = 'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee';

test('the header is blktap\'s cbt_log_metadata: uuids at 0 and 16, consistent at 32, size at 40, bitmap at 48', (t) => {
  const log = newLog(10 * CBT_BLOCK_SIZE + 1, { parent: P, child: C });
  setBlocks(log.bitmap, 0, 0);
  setBlocks(log.bitmap, 10, 10);
  const buf = encodeLog(log);
  t.is(buf.length, 48 + 2, '11 blocks: 2 bytes of bitmap');
  t.is(buf.toString('hex', 0, 16), P.replace(/-/g, ''));
  t.is(buf.toString('hex', 16, 32), C.replace(/-/g, ''));
  t.is(buf.readInt32LE(32), 1);
  t.is(buf.readBigUInt64LE(40), BigInt(10 * CBT_BLOCK_SIZE + 1));
  t.is(buf[48], 0x01, 'block 0: bit 0 of byte 0');
  t.is(buf[49], 0x04, 'block 10: bit 2 of byte 1');
  t.deepEqual(decodeLog(buf), log);
});

test('xapi gets the bitmap MSB first per byte, base64', (t) => {
  const bitmap = Buffer.from([0x01, 0x80, 0x03]);
  t.is(toXapiBase64(bitmap), Buffer.from([0x80, 0x01, 0xc0]).toString('base64'));
  t.deepEqual(fromXapiBase64(toXapiBase64(bitmap)), bitmap);
  t.deepEqual(changedRanges(allSet(3 * CBT_BLOCK_SIZE - 5), 3 * CBT_BLOCK_SIZE - 5), [{ offset: 0, length: 3 * CBT_BLOCK_SIZE - 5 }], 'ranges clip to the size');
});

test('damaged logs are refused', (t) => {
  const good = encodeLog(newLog(100 * CBT_BLOCK_SIZE));
  t.throws(() => decodeLog(good.subarray(0, 40)), { instanceOf: CbtLogError, message: /shorter than its header/ });
  t.throws(() => decodeLog(good.subarray(0, good.length - 1)), { message: /bitmap cut short/ });
  const flag = Buffer.from(good);
  flag.writeInt32LE(7, 32);
  t.throws(() => decodeLog(flag), { message: /neither 0 nor 1/ });
});

test('changed blocks along a chain: logs after the source ORed, inconsistent ones count as every block, a broken chain is an error', async (t) => {
  const ids = ['00000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-00000000000b', '00000000-0000-0000-0000-00000000000c'];
  const logs = new Map<string, CbtLog>();
  ids.forEach((id, i) => logs.set(id, newLog(8 * CBT_BLOCK_SIZE * (i === 2 ? 2 : 1), { parent: ids[i - 1] ?? NIL_UUID, child: ids[i + 1] ?? NIL_UUID })));
  setBlocks(logs.get(ids[0])!.bitmap, 0, 0); // before the source: never listed
  setBlocks(logs.get(ids[1])!.bitmap, 3, 4);
  setBlocks(logs.get(ids[2])!.bitmap, 12, 12);
  const read = async (u: string) => logs.get(u) ?? Promise.reject(new Error(`no log ${u}`));
  const r = await changedBetween(read, ids[0], ids[2]);
  t.is(r.size, 16 * CBT_BLOCK_SIZE, "the target's size");
  t.deepEqual([...r.bitmap], [0x18, 0x10]);
  logs.get(ids[1])!.consistent = false;
  t.deepEqual([...(await changedBetween(read, ids[0], ids[2])).bitmap], [0xff, 0x10], 'inconsistent: every block of its size');
  await t.throwsAsync(changedBetween(read, ids[2], ids[0]), { message: /no chain of logs leads/ });
  logs.get(ids[2])!.child = ids[1];
  await t.throwsAsync(changedBetween(read, ids[1], ids[0]), { message: /loops/ });
});

test('merging a parent into its child (cbt-util coalesce): child |= parent; an inconsistent parent makes every block changed', (t) => {
  const parent = newLog(16 * CBT_BLOCK_SIZE);
  const child = newLog(16 * CBT_BLOCK_SIZE);
  setBlocks(parent.bitmap, 1, 2);
  setBlocks(child.bitmap, 9, 9);
  mergeBitmap(parent, child);
  t.deepEqual([...child.bitmap], [0x06, 0x02]);
  parent.consistent = false;
  mergeBitmap(parent, child);
  t.deepEqual([...child.bitmap], [0xff, 0xff]);
});

function cbtUtil(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':')) if (dir && fs.existsSync(path.join(dir, 'cbt-util'))) return path.join(dir, 'cbt-util');
  return undefined;
}

const util = cbtUtil();
(util ? test : test.skip)("blktap's cbt-util reads our logs and we read its (runs when cbt-util is on PATH)", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cbt-util-'));
  try {
    const run = (...args: string[]) => execFileSync(util!, args, { encoding: 'buffer' });
    const ours = path.join(dir, 'ours.cbtlog');
    const log = newLog(40 * CBT_BLOCK_SIZE + 123, { parent: P, child: C });
    setBlocks(log.bitmap, 0, 2);
    setBlocks(log.bitmap, 39, 40);
    log.consistent = false;
    await writeLog(ours, log);
    t.is(run('get', '-n', ours, '-p').toString().trim(), P);
    t.is(run('get', '-n', ours, '-c').toString().trim(), C);
    t.is(run('get', '-n', ours, '-f').toString().trim(), '0');
    t.is(run('get', '-n', ours, '-s').toString().trim(), String(40 * CBT_BLOCK_SIZE + 123));
    t.deepEqual(run('get', '-n', ours, '-b'), log.bitmap, 'the bitmap as cbt-util dumps it');

    const theirs = path.join(dir, 'theirs.cbtlog');
    run('create', '-n', theirs, '-s', String(8 * CBT_BLOCK_SIZE));
    run('set', '-n', theirs, '-p', C, '-c', P, '-f', '1', '-s', String(20 * CBT_BLOCK_SIZE));
    const read = await readLog(theirs);
    t.like(read, { parent: C, child: P, consistent: true, size: 20 * CBT_BLOCK_SIZE });
    t.is(read.bitmap.length, 3);

    // cbt-util coalesce and ours agree.
    const parent = path.join(dir, 'p.cbtlog');
    const child = path.join(dir, 'c.cbtlog');
    const p = newLog(16 * CBT_BLOCK_SIZE);
    setBlocks(p.bitmap, 3, 5);
    await writeLog(parent, p);
    const c = await createLog(child, 16 * CBT_BLOCK_SIZE);
    setBlocks(c.bitmap, 11, 11);
    await writeLog(child, c);
    run('coalesce', '-p', parent, '-c', child);
    mergeBitmap(p, c);
    t.deepEqual((await readLog(child)).bitmap, c.bitmap);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('readLog reads the header, then exactly the bitmap it announces: what follows (an LV is larger than its log) is ignored; a cut log is refused', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cbt-read-'));
  try {
    const log = newLog(70 * CBT_BLOCK_SIZE + 1, { parent: P });
    setBlocks(log.bitmap, 3, 70);
    const bytes = encodeLog(log);
    const padded = path.join(dir, 'padded');
    fs.writeFileSync(padded, Buffer.concat([bytes, Buffer.alloc(4096, 0xff)])); // as an extent past the log holds anything
    t.deepEqual(await readLog(padded), log);
    const cut = path.join(dir, 'cut');
    fs.writeFileSync(cut, bytes.subarray(0, bytes.length - 1));
    await t.throwsAsync(readLog(cut), { instanceOf: CbtLogError, message: /cut short/ });
    const short = path.join(dir, 'short');
    fs.writeFileSync(short, bytes.subarray(0, 20));
    await t.throwsAsync(readLog(short), { instanceOf: CbtLogError, message: /shorter than its header/ });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
