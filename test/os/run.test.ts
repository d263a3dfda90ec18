import test from 'ava';
import { formatCommand, maskArgv, maskText, MASK, runTool, ToolError } from '../../lib/os/run.js';

test('runTool returns stdout, stderr and code; stdin from input', async (t) => {
  const r = await runTool(process.execPath, ['-e', 'process.stdin.pipe(process.stdout); console.error("err")'], { input: 'hello' });
  t.deepEqual(r, { stdout: 'hello', stderr: 'err\n', code: 0 });
});

test('runTool runs with the C locale and sbin on PATH', async (t) => {
  const r = await runTool(process.execPath, ['-e', 'console.log(process.env.LC_ALL, process.env.PATH.split(":").includes("/usr/sbin"))'], {
    env: { PATH: '/usr/bin:/bin' },
  });
  t.is(r.stdout, 'C true\n');
});

test('argv is never interpreted by a shell', async (t) => {
  const r = await runTool(process.execPath, ['-e', 'console.log(JSON.stringify(process.argv.slice(1)))', '$(touch /tmp/x); `id`', '127.0.0.1;reboot']);
  t.deepEqual(JSON.parse(r.stdout), ['$(touch /tmp/x); `id`', '127.0.0.1;reboot']);
});

test('a non-zero exit throws ToolError with command, code and stderr; allowCodes returns it', async (t) => {
  const script = 'console.error("first\\nsecond problem"); process.exit(3)';
  const e = await t.throwsAsync(runTool(process.execPath, ['-e', script]), { instanceOf: ToolError });
  t.is(e.code, 3);
  t.is(e.cmd, process.execPath);
  t.deepEqual(e.args, ['-e', script]);
  t.is(e.stderr, 'first\nsecond problem\n');
  t.regex(e.message, /exited with code 3: first \| second problem$/);
  const r = await runTool(process.execPath, ['-e', script], { allowCodes: [3] });
  t.is(r.code, 3);
});

test('a missing program is a ToolError with spawnError ENOENT', async (t) => {
  const e = await t.throwsAsync(runTool('/nonexistent/tool', ['x']), { instanceOf: ToolError });
  t.is(e.spawnError, 'ENOENT');
  t.is(e.code, null);
  t.regex(e.message, /^\/nonexistent\/tool x: could not run \(ENOENT\)/);
});

test('timeoutMs kills the tool and says so', async (t) => {
  const start = Date.now();
  const e = await t.throwsAsync(runTool(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { timeoutMs: 300 }), { instanceOf: ToolError });
  t.true(e.timedOut);
  t.regex(e.message, /timed out/);
  t.true(Date.now() - start < 5000);
});

test('ToolError masks secrets in argv, stderr, stdout and message', async (t) => {
  const secret = 'S3cr3t!pw';
  const script = 'console.log("out " + process.argv[1]); console.error("login failed for password " + process.argv[1]); process.exit(24)';
  const e = await t.throwsAsync(runTool(process.execPath, ['-e', script, secret, '--password', secret], { secrets: [secret] }), {
    instanceOf: ToolError,
  });
  const all = `${e.message}|${e.stderr}|${e.stdout}|${e.args.join(' ')}|${JSON.stringify(e)}|${String(e.stack)}`;
  t.false(all.includes(secret));
  t.deepEqual(e.args.slice(2), [MASK, '--password', MASK]);
  t.is(e.stderr, `login failed for password ${MASK}\n`);
});

test('maskArgv: values after password flags, -n <secret key> -v <value>, key=value pairs', (t) => {
  t.deepEqual(maskArgv(['tgtadm', '--mode', 'account', '--user', 'alice', '--password', 'pw1']), [
    'tgtadm', '--mode', 'account', '--user', 'alice', '--password', MASK,
  ]);
  t.deepEqual(
    maskArgv(['-m', 'node', '-o', 'update', '-n', 'node.session.auth.username', '-v', 'bob', '-n', 'node.session.auth.password', '-v', 'pw2',
      '-n', 'node.session.auth.password_in', '-v', 'pw3', '-n', 'discovery.sendtargets.auth.password', '-v', 'pw4']),
    ['-m', 'node', '-o', 'update', '-n', 'node.session.auth.username', '-v', 'bob', '-n', 'node.session.auth.password', '-v', MASK,
      '-n', 'node.session.auth.password_in', '-v', MASK, '-n', 'discovery.sendtargets.auth.password', '-v', MASK],
  );
  t.deepEqual(maskArgv(['-o', 'user=me,password=pw5,vers=3']), ['-o', `user=me,password=${MASK},vers=3`]);
  t.deepEqual(maskArgv(['--chap-secret', 'pw6', '--name=node.session.auth.password', '--value=pw7']), [
    '--chap-secret', MASK, '--name=node.session.auth.password', `--value=${MASK}`,
  ]);
  t.deepEqual(maskArgv(['connect', 'host', 'pw8x'], ['pw8x']), ['connect', 'host', MASK]);
});

test('maskText masks explicit secrets and key=value secrets', (t) => {
  t.is(maskText('user=a password=b ok'), `user=a password=${MASK} ok`);
  t.is(maskText('incoming_chappassword=xyz, rest'), `incoming_chappassword=${MASK}, rest`);
  t.is(maskText('the secret is hunter2', ['hunter2']), `the secret is ${MASK}`);
});

test('formatCommand quotes what a reader could misread', (t) => {
  t.is(formatCommand('lvs', ['--config', 'devices { x }', 'VG/LV']), 'lvs --config "devices { x }" VG/LV');
});
