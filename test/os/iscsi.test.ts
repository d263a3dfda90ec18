import test from 'ava';
import { mkdtemp, mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as iscsi from '../../lib/os/iscsi.js';
import { MASK, ToolError } from '../../lib/os/run.js';
import { InvalidArgumentError } from '../../lib/os/validate.js';
import { fixture, recorder } from './helpers.js';

const IQN = 'iqn.2024-01.test.smvm:chap';
const NODE = ['iscsiadm', '-m', 'node', '-T', IQN, '-p', '127.0.0.1:3260'];

test('portals: ip:port, IPv6 in brackets', (t) => {
  t.is(iscsi.formatPortal('127.0.0.1'), '127.0.0.1:3260');
  t.is(iscsi.formatPortal('fe80::1', 3261), '[fe80::1]:3261');
  t.throws(() => iscsi.formatPortal('127.0.0.1;reboot'), { instanceOf: InvalidArgumentError });
  t.is(iscsi.byPathLink('127.0.0.1', 3260, IQN, 1), `/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-${IQN}-lun-1`);
});

test('discovery argv and parsing of real output (and IPv6 lines)', async (t) => {
  const rec = recorder(() => ({ stdout: fixture('iscsiadm-discovery.txt') }));
  const found = await iscsi.discover('127.0.0.1', 3260, { run: rec.run });
  t.deepEqual(rec.argv(), [['iscsiadm', '-m', 'discovery', '-t', 'sendtargets', '-p', '127.0.0.1:3260']]);
  t.deepEqual(found, [
    { address: '127.0.0.1', port: 3260, tpgt: 1, iqn: 'iqn.2024-01.test.smvm:one' },
    { address: '127.0.0.1', port: 3260, tpgt: 1, iqn: 'iqn.2024-01.test.smvm:chap' },
  ]);
  t.deepEqual(iscsi.parseDiscovery('[fd00::5]:3260,2 iqn.2001-04.com.example:t1\ngarbage\n'), [
    { address: 'fd00::5', port: 3260, tpgt: 2, iqn: 'iqn.2001-04.com.example:t1' },
  ]);
});

test('login without CHAP: new record, authmethod None, login', async (t) => {
  const rec = recorder();
  await iscsi.login(IQN, '127.0.0.1', 3260, undefined, { run: rec.run });
  t.deepEqual(rec.argv(), [
    [...NODE, '-o', 'new'],
    [...NODE, '-o', 'update', '-n', 'node.session.auth.authmethod', '-v', 'None'],
    [...NODE, '--login'],
  ]);
});

test('login with mutual CHAP sets all four keys before login and passes the secrets for masking', async (t) => {
  const rec = recorder();
  await iscsi.login(IQN, '127.0.0.1', 3260, { username: 'alice', password: 'pw-out', usernameIn: 'tgt', passwordIn: 'pw-in' }, { run: rec.run });
  t.deepEqual(rec.argv(), [
    [...NODE, '-o', 'new'],
    [...NODE, '-o', 'update',
      '-n', 'node.session.auth.authmethod', '-v', 'CHAP',
      '-n', 'node.session.auth.username', '-v', 'alice',
      '-n', 'node.session.auth.password', '-v', 'pw-out',
      '-n', 'node.session.auth.username_in', '-v', 'tgt',
      '-n', 'node.session.auth.password_in', '-v', 'pw-in'],
    [...NODE, '--login'],
  ]);
  t.deepEqual(rec.calls[1]?.opts?.secrets, ['pw-out', 'pw-in']);
  t.deepEqual(rec.calls[2]?.opts?.secrets, ['pw-out', 'pw-in']);
});

test('a CHAP failure is an IscsiError naming the cause; no secret anywhere in it', async (t) => {
  const stderr = fixture('iscsiadm-login-auth.stderr');
  const secret = 'Wrong-Secret-2';
  const rec = recorder((c) => {
    if (c.args.includes('--login')) throw new ToolError('iscsiadm', c.args, 24, stderr, '', null, false, undefined, c.opts?.secrets);
    if (c.args.includes('update')) throw new ToolError('iscsiadm', c.args, 99, 'iscsiadm: cannot set value', '', null, false, undefined, c.opts?.secrets);
    return undefined;
  });
  const e1 = await t.throwsAsync(iscsi.login(IQN, '127.0.0.1', 3260, undefined, { run: rec.run }), { instanceOf: iscsi.IscsiError });
  t.is(e1.message, `iSCSI auth settings for ${IQN} failed: cannot set value (iscsiadm exit 99)`);
  const rec2 = recorder((c) => {
    if (c.args.includes('--login')) throw new ToolError('iscsiadm', c.args, 24, stderr, '', null, false, undefined, c.opts?.secrets);
    return undefined;
  });
  const e = await t.throwsAsync(iscsi.login(IQN, '127.0.0.1', 3260, { username: 'alice', password: secret }, { run: rec2.run }), {
    instanceOf: iscsi.IscsiError,
  });
  t.is(e.exitCode, 24);
  t.is(e.message, `iSCSI login to ${IQN} at 127.0.0.1:3260 failed: authorization failure (CHAP user or password wrong, or CHAP required) (iscsiadm exit 24)`);
  const rec3 = recorder((c) => {
    throw new ToolError('iscsiadm', c.args, 99, `echo ${secret}`, '', null, false, undefined, c.opts?.secrets);
  });
  const e3 = await t.throwsAsync(iscsi.login(IQN, '127.0.0.1', 3260, { username: 'alice', password: secret }, { run: rec3.run }));
  // even a tool that echoes the secret on any step never leaks it
  t.false(JSON.stringify(e3).includes(secret));
  const upd = new ToolError('iscsiadm', ['-n', 'node.session.auth.password', '-v', secret], 7, `bad value ${secret}`, '', null, false, undefined, [secret]);
  t.false(`${upd.message} ${upd.stderr} ${upd.args.join(' ')}`.includes(secret));
  t.deepEqual(upd.args, ['-n', 'node.session.auth.password', '-v', MASK]);
});

test('already logged in is success; logout of no session is success', async (t) => {
  const exists = recorder((c) => {
    if (c.args.includes('--login')) throw new ToolError('iscsiadm', c.args, 15, 'iscsiadm: default: 1 session requested, but 1 already present.', '');
    return undefined;
  });
  await t.notThrowsAsync(iscsi.login(IQN, '127.0.0.1', 3260, undefined, { run: exists.run }));
  const none = recorder((c) => {
    throw new ToolError('iscsiadm', c.args, 21, 'iscsiadm: No matching sessions found', '');
  });
  await t.notThrowsAsync(iscsi.logout(IQN, '127.0.0.1', 3260, { run: none.run }));
  await t.notThrowsAsync(iscsi.deleteNode(IQN, '127.0.0.1', 3260, { run: none.run }));
  t.deepEqual(none.argv(), [
    [...NODE, '--logout'],
    [...NODE, '-o', 'delete'],
  ]);
});

test('sessions: real output parsed; "No active sessions" (exit 21) is []', async (t) => {
  const rec = recorder(() => ({ stdout: fixture('iscsiadm-session.txt') }));
  const s = await iscsi.sessions({ run: rec.run });
  t.deepEqual(rec.argv(), [['iscsiadm', '-m', 'session']]);
  t.is(s.length, 2);
  t.like(s.find((x) => x.iqn === IQN), { transport: 'tcp', address: '127.0.0.1', port: 3260, tpgt: 1 });
  t.true(s.every((x) => Number.isInteger(x.sid) && x.sid > 0));
  const none = recorder((c) => {
    throw new ToolError('iscsiadm', c.args, 21, fixture('iscsiadm-session-none.stderr'), '');
  });
  t.deepEqual(await iscsi.sessions({ run: none.run }), []);
  t.deepEqual(iscsi.parseSessions('tcp: [12] [fd00::5]:3260,1 iqn.2001-04.com.example:t1 (non-flash)\n'), [
    { transport: 'tcp', sid: 12, address: 'fd00::5', port: 3260, tpgt: 1, iqn: 'iqn.2001-04.com.example:t1' },
  ]);
});

test('rescan argv; bad target names refused before iscsiadm runs', async (t) => {
  const rec = recorder();
  await iscsi.rescanSession(4, { run: rec.run });
  t.deepEqual(rec.argv(), [['iscsiadm', '-m', 'session', '-r', '4', '--rescan']]);
  await t.throwsAsync(iscsi.login('-T', '127.0.0.1', 3260, undefined, { run: rec.run }), { instanceOf: InvalidArgumentError });
  await t.throwsAsync(iscsi.login(IQN, '127.0.0.1;x', 3260, undefined, { run: rec.run }), { instanceOf: InvalidArgumentError });
  await t.throwsAsync(iscsi.login(IQN, '127.0.0.1', 3260, { username: 'a', password: 'x\ny' }, { run: rec.run }), { instanceOf: InvalidArgumentError });
  t.is(rec.calls.length, 1);
});

test('sessionLuns reads the sysfs layout (LUN 0 controller has no disk)', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'sysfs-'));
  const dev = join(root, 'class/iscsi_session/session4/device');
  await mkdir(join(dev, 'target1:0:0/1:0:0:0'), { recursive: true });
  await mkdir(join(dev, 'target1:0:0/1:0:0:2/block/sdc'), { recursive: true });
  await mkdir(join(dev, 'target1:0:0/1:0:0:1/block/sdb'), { recursive: true });
  await mkdir(join(dev, 'connection4:0'), { recursive: true });
  await writeFile(join(root, 'class/iscsi_session/session4/targetname'), `${IQN}\n`);
  t.deepEqual(await iscsi.sessionLuns(4, root), [
    { lun: 0, hctl: '1:0:0:0' },
    { lun: 1, hctl: '1:0:0:1', device: '/dev/sdb' },
    { lun: 2, hctl: '1:0:0:2', device: '/dev/sdc' },
  ]);
  t.is(await iscsi.sessionTargetName(4, root), IQN);
  t.deepEqual(await iscsi.sessionLuns(5, root), []);
});
