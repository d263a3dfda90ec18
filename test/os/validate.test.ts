import test from 'ava';
import {
  checkAbsPath,
  checkArg,
  checkDevicePath,
  checkHost,
  checkIqn,
  checkLvmName,
  checkLvmTag,
  checkPort,
  checkSecret,
  InvalidArgumentError,
} from '../../lib/os/validate.js';

const refuses = (t: import('ava').ExecutionContext, f: () => unknown, re?: RegExp) => {
  const e = t.throws(f, { instanceOf: InvalidArgumentError });
  if (re) t.regex(e!.message, re);
};

test('option injection and control characters are refused for every argv value', (t) => {
  refuses(t, () => checkArg('server', '-oProxyCommand=touch /tmp/x'), /must not start with "-"/);
  refuses(t, () => checkArg('server', '--help'));
  refuses(t, () => checkArg('x', 'a\nb'), /control characters/);
  refuses(t, () => checkArg('x', 'a\0b'));
  refuses(t, () => checkArg('x', ''));
  refuses(t, () => checkArg('x', 42));
  t.is(checkArg('x', 'plain value'), 'plain value');
});

test('hosts: names and IPs only', (t) => {
  t.is(checkHost('127.0.0.1'), '127.0.0.1');
  t.is(checkHost('nfs-1.example.org'), 'nfs-1.example.org');
  t.is(checkHost('[fe80::1]'), 'fe80::1');
  t.is(checkHost('::1'), '::1');
  refuses(t, () => checkHost('127.0.0.1;touch /tmp/x'), /not a host name or IP address/);
  refuses(t, () => checkHost('-oProxyCommand'));
  refuses(t, () => checkHost('a b'));
  refuses(t, () => checkHost('host:/path'));
  refuses(t, () => checkHost('bad_-.example'));
  refuses(t, () => checkHost('$(reboot)'));
});

test('paths: absolute, no . or .. segments', (t) => {
  t.is(checkAbsPath('/srv/nfs/sr'), '/srv/nfs/sr');
  refuses(t, () => checkAbsPath('../../etc'), /absolute/);
  refuses(t, () => checkAbsPath('/srv/../../etc'), /"\." or "\.\." segments/);
  refuses(t, () => checkAbsPath('/srv/./x'));
  refuses(t, () => checkAbsPath('relative/path'));
  refuses(t, () => checkAbsPath('/srv/x\n/etc'));
});

test('device paths: /dev only, characters safe inside an LVM filter', (t) => {
  t.is(checkDevicePath('/dev/disk/by-id/scsi-360000000000000000e00000000010001'), '/dev/disk/by-id/scsi-360000000000000000e00000000010001');
  t.is(checkDevicePath('/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.2024-01.test:x-lun-1'), '/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.2024-01.test:x-lun-1');
  refuses(t, () => checkDevicePath('/etc/passwd'));
  refuses(t, () => checkDevicePath('/dev/sda|'));
  refuses(t, () => checkDevicePath('/dev/sd"a'));
  refuses(t, () => checkDevicePath('/dev/../etc/x'));
});

test('iSCSI names', (t) => {
  t.is(checkIqn('iqn.2024-01.test.smvm:one'), 'iqn.2024-01.test.smvm:one');
  t.is(checkIqn('eui.02004567A425678D'), 'eui.02004567A425678D');
  t.is(checkIqn('naa.52004567BA64678D'), 'naa.52004567BA64678D');
  refuses(t, () => checkIqn('-iqn.2024-01.x'));
  refuses(t, () => checkIqn('iqn.2024-01.x y'));
  refuses(t, () => checkIqn('iqn.24-1.x'));
  refuses(t, () => checkIqn('*'));
});

test('ports, LVM names and tags', (t) => {
  t.is(checkPort(3260), 3260);
  t.is(checkPort('2049'), 2049);
  refuses(t, () => checkPort(0));
  refuses(t, () => checkPort(70000));
  refuses(t, () => checkPort('3260; x'));
  t.is(checkLvmName('VG_XenStorage-7f1c'), 'VG_XenStorage-7f1c');
  refuses(t, () => checkLvmName('-an'));
  refuses(t, () => checkLvmName('..'));
  refuses(t, () => checkLvmName('a/b'));
  t.is(checkLvmTag('vhd-parent=abc'), 'vhd-parent=abc');
  refuses(t, () => checkLvmTag('a b'));
});

test('a refused secret is never echoed', (t) => {
  const e = t.throws(() => checkSecret('-secret\nvalue', 'CHAP password'), { instanceOf: InvalidArgumentError });
  t.false(e!.message.includes('-secret'));
  t.is(e!.value, undefined);
});
