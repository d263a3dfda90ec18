import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { createSMLog, formatTimestamp, maskSecrets, maskText, shortHostname, smlogPath } from '../../lib/log/index.js';

const WRITER = fileURLToPath(new URL('./fixtures/log-writer.js', import.meta.url));
const tempRoot = () => fs.mkdtempSync(path.join(os.tmpdir(), 'smlog-test-'));
const readLines = (root: string) => fs.readFileSync(smlogPath(root), 'utf8').split('\n').slice(0, -1);

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const LINE = (ident: string, pid = process.pid) =>
  new RegExp(`^(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \\d{2} \\d{2}:\\d{2}:\\d{2} ${escapeRe(shortHostname())} ${ident}: \\[${pid}\\] (.*)$`);

test('lines are `Mon DD HH:MM:SS host SM: [pid] msg`, day zero-padded', (t) => {
  const root = tempRoot();
  const log = createSMLog({ ident: 'SM', root });
  log.info('hello %s', 'world');
  log.error('bad thing');
  log.debug('detail');
  const lines = readLines(root);
  t.is(lines.length, 3);
  t.is(LINE('SM').exec(lines[0])?.[2], 'hello world');
  t.is(LINE('SM').exec(lines[1])?.[2], 'bad thing');
  t.is(LINE('SM').exec(lines[2])?.[2], 'detail');
  t.is(formatTimestamp(new Date(2024, 10, 2, 3, 4, 5)), 'Nov 02 03:04:05');
  t.false(shortHostname().includes('.'));
});

test('multi-line messages become one prefixed line each', (t) => {
  const root = tempRoot();
  const log = createSMLog({ ident: 'SMGC', root });
  log.info('SR 4659 (2 VDIs in 1 VHD trees):\n        *8341e744[VHD](2.000G//2.012G|n)\n            53b46c10[VHD](2.000G//40.000M|n)\n');
  const lines = readLines(root);
  t.deepEqual(
    lines.map((line) => LINE('SMGC').exec(line)?.[2]),
    ['SR 4659 (2 VDIs in 1 VHD trees):', '        *8341e744[VHD](2.000G//2.012G|n)', '            53b46c10[VHD](2.000G//40.000M|n)'],
  );
});

test('levels below the configured one are dropped', (t) => {
  const root = tempRoot();
  const log = createSMLog({ ident: 'SM', root, level: 'info' });
  log.debug('hidden');
  log.info('shown');
  t.deepEqual(readLines(root).map((l) => LINE('SM').exec(l)?.[2]), ['shown']);
});

test('logVerb masks secrets in params; free text password=... is masked too', (t) => {
  const root = tempRoot();
  const log = createSMLog({ ident: 'SM', root });
  log.logVerb('sr_create', {
    host_ref: 'OpaqueRef:h',
    session_ref: 'OpaqueRef:s3ss10n',
    device_config: { target: '10.0.0.1', chapuser: 'admin', chappassword: 'hunter2', incoming_chappassword: 'x2' },
    data: Buffer.alloc(3),
  });
  log.info('iscsiadm -m node --op update -n node.session.auth.password=hunter3 -v x');
  log.info(`config {'chappassword': 'hunter4', "password":"hunter5"} session_ref=OpaqueRef:abc rest`);
  const text = fs.readFileSync(smlogPath(root), 'utf8');
  for (const secret of ['hunter2', 'x2', 's3ss10n', 'hunter3', 'hunter4', 'hunter5', 'OpaqueRef:abc']) t.false(text.includes(secret), secret);
  t.regex(text, /sr_create \{"host_ref":"OpaqueRef:h","session_ref":"\*\*\*\*\*\*","device_config":\{"target":"10.0.0.1","chapuser":"admin","chappassword":"\*\*\*\*\*\*"/);
  t.regex(text, /"data":"<3 bytes>"/);
  t.regex(text, / rest\n/);
  t.is(maskText('user=a password=b,other=c'), 'user=a password=******,other=c');
  t.deepEqual(maskSecrets({ a: [{ PASSWORD: 1 }] }), { a: [{ PASSWORD: '******' }] });
});

test('logError writes a readable block with name, code, opterr, stack and cause', (t) => {
  const root = tempRoot();
  const log = createSMLog({ ident: 'SM', root });
  const cause = new Error('EIO reading block 7');
  const err = Object.assign(new Error('The VDI is in use [opterr=vm-1]', { cause }), { name: 'VDIInUse', code: 24, opterr: 'vm-1' });
  log.logError(err, 'vdi_delete');
  const messages = readLines(root).map((l) => LINE('SM').exec(l)?.[2] ?? '');
  t.is(messages[0], '***** vdi_delete: error: VDIInUse');
  t.true(messages.includes('  code: 24'));
  t.true(messages.includes('  opterr: vm-1'));
  t.true(messages.includes('  stack:'));
  t.true(messages.some((m) => /^ {4}at /.test(m)));
  t.true(messages.includes('  caused by: Error'));
  t.true(messages.includes('  message: EIO reading block 7'));
});

function runWriter(root: string, args: string[]): Promise<number | null> {
  const child = spawn(process.execPath, [WRITER, ...args], { env: { ...process.env, SM_ROOT: root }, stdio: 'ignore' });
  return new Promise((resolve) => child.once('exit', resolve));
}

test('SM_ROOT is honoured and every line is on disk when the process exits', async (t) => {
  const root = tempRoot();
  t.is(await runWriter(root, ['SMGC', 'exit', '2000']), 0);
  const lines = readLines(root);
  t.is(lines.length, 2000);
  t.regex(lines[1999], / SMGC: \[\d+\] tag=exit n=1999 x+$/);
  t.true(fs.existsSync(path.join(root, 'var/log/SMlog')));
});

test('concurrent writers never interleave inside a line or a message', async (t) => {
  const root = tempRoot();
  const writers = ['a', 'b', 'c', 'd'];
  const codes = await Promise.all([
    ...writers.map((tag) => runWriter(root, ['SM', tag, '500'])),
    runWriter(root, ['SM', 'm', '300', 'multi']),
  ]);
  t.deepEqual(codes, [0, 0, 0, 0, 0]);
  const lines = readLines(root);
  t.is(lines.length, 4 * 500 + 300 * 2);
  const seen = new Set<string>();
  const whole = / SM: \[\d+\] tag=([a-dm]) n=(\d+)(?: part=([12]))? x{120}$/;
  lines.forEach((line, i) => {
    const m = whole.exec(line);
    if (!m) return t.fail(`torn line ${i}: ${line.slice(0, 80)}`);
    seen.add(`${m[1]}:${m[2]}:${m[3] ?? ''}`);
    // The two lines of one message were one write: they must be adjacent.
    if (m[3] === '1') t.true(lines[i + 1]?.includes(`tag=m n=${m[2]} part=2`), `message ${m[2]} split`);
  });
  t.is(seen.size, lines.length);
});

test('a logger whose directory is missing creates it; one that cannot write does not throw', (t) => {
  const root = path.join(tempRoot(), 'deep', 'er');
  createSMLog({ ident: 'SM', root }).info('made dirs');
  t.is(readLines(root).length, 1);
  const blocked = tempRoot();
  fs.writeFileSync(path.join(blocked, 'var'), 'a file where a directory should be');
  const log = createSMLog({ ident: 'SM', root: blocked });
  t.notThrows(() => log.info('goes to stderr instead'));
});

test('logVerb keeps a huge request to one bounded line', (t) => {
  const root = tempRoot();
  createSMLog({ ident: 'SM', root }).logVerb('vdi_create', { args: ['x'.repeat(100_000)] });
  const lines = readLines(root);
  t.is(lines.length, 1);
  t.true(lines[0].length < 17_000);
  t.regex(lines[0], /\.\.\. \(\d+ more chars\)$/);
});
