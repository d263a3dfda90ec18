/**
 * The sm-vhd CLI, run as a real process with argv arrays: output formats exactly
 * as vhd-util prints them, exit codes, and that bad input writes nothing.
 */
import test, { ExecutionContext } from 'ava';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createDifferencing, createDynamic, VhdImage } from '../../lib/vhd/index.js';
import {
  assertSameBytes,
  dirState,
  MiB,
  readBytes,
  readChain,
  Rng,
  runCli,
  RunResult,
  withTempDir,
  writeBytes,
} from './helpers.js';

function ok(t: ExecutionContext, r: RunResult, what: string): void {
  t.is(r.code, 0, `${what}: exit ${r.code}, stderr: ${r.stderr}`);
  t.is(r.stderr, '', `${what}: nothing on stderr`);
}

test('create, snapshot and query -v -s -p -f -d print exactly what vhd-util prints', async (t) => {
  await withTempDir(async (dir) => {
    const base = join(dir, 'base.vhd');
    const snap = join(dir, 'snap.vhd');
    let r = await runCli(['create', '-n', base, '-s', '100']);
    ok(t, r, 'create');
    t.is(r.stdout, '');
    t.is((await stat(base)).size, 3584);
    r = await runCli(['snapshot', '-n', snap, '-p', base]);
    ok(t, r, 'snapshot');
    t.is(r.stdout, '');
    t.is((await stat(snap)).size, 5120);

    r = await runCli(['query', '-n', snap, '-v', '-s', '-p', '-f', '-d']);
    ok(t, r, 'query snapshot');
    t.is(r.stdout, `100\n5120\n${base}\nhidden: 0\nchain depth: 2\n`);
    r = await runCli(['query', '-n', base, '-v', '-s', '-p', '-f', '-d']);
    ok(t, r, 'query base');
    t.is(r.stdout, `100\n3584\n${base} has no parent\nhidden: 0\nchain depth: 1\n`);
    // Relative names from the image's directory: the parent still prints as an absolute path.
    r = await runCli(['query', '-n', 'snap.vhd', '-p'], { cwd: dir });
    ok(t, r, 'query relative');
    t.is(r.stdout, `${base}\n`);
    // Flags print in the fixed order, whatever order they are given in.
    r = await runCli(['query', '-n', snap, '-d', '-v']);
    t.is(r.stdout, '100\nchain depth: 2\n');
  });
});

test('scan -f -m prints one line per image, sorted by name, with hidden and parent', async (t) => {
  await withTempDir(async (dir) => {
    await createDynamic(join(dir, 'b-base.vhd'), 10 * MiB);
    await createDifferencing(join(dir, 'a-child.vhd'), join(dir, 'b-base.vhd'));
    await createDynamic(join(dir, 'c-other.vhd'), 20 * MiB + 512);
    await writeFile(join(dir, 'notes.txt'), 'not an image');
    ok(t, await runCli(['set', '-n', join(dir, 'b-base.vhd'), '-f', 'hidden', '-v', '1']), 'set hidden');
    const r = await runCli(['scan', '-f', '-m', join(dir, '*.vhd')]);
    ok(t, r, 'scan');
    t.is(
      r.stdout,
      'vhd=a-child.vhd capacity=10485760 size=5120 hidden=0 parent=b-base.vhd\n' +
        'vhd=b-base.vhd capacity=10485760 size=3584 hidden=1 parent=none\n' +
        'vhd=c-other.vhd capacity=20972032 size=3584 hidden=0 parent=none\n',
    );
    // An empty match prints nothing and succeeds.
    const none = await runCli(['scan', '-f', '-m', join(dir, '*.nothing')]);
    ok(t, none, 'scan of nothing');
    t.is(none.stdout, '');
  });
});

test('set hidden 1/0 flips byte 85 of both footers', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 'h.vhd');
    await createDynamic(p, 8 * MiB);
    for (const v of ['1', '0', '1']) {
      ok(t, await runCli(['set', '-n', p, '-f', 'hidden', '-v', v]), `set hidden ${v}`);
      const size = (await stat(p)).size;
      t.is((await readBytes(p, 85, 1))[0], Number(v));
      t.is((await readBytes(p, size - 512 + 85, 1))[0], Number(v));
      t.is((await runCli(['query', '-n', p, '-f'])).stdout, `hidden: ${v}\n`);
    }
  });
});

test('write + export round trip; coalesce prints "Coalesced N sectors"; modify relinks', async (t) => {
  await withTempDir(async (dir) => {
    const rng = new Rng(9);
    const base = join(dir, 'base.vhd');
    const mid = join(dir, 'mid.vhd');
    const leaf = join(dir, 'leaf.vhd');
    const model = Buffer.alloc(16 * MiB);
    ok(t, await runCli(['create', '-n', base, '-s', '16']), 'create');
    const put = async (img: string, offset: number, len: number) => {
      const data = rng.bytes(len);
      const file = join(dir, 'data.bin');
      await writeFile(file, data);
      ok(t, await runCli(['write', '-n', img, '-i', file, '-o', String(offset)]), `write ${offset}`);
      data.copy(model, offset);
    };
    await put(base, 0, 3 * MiB);
    ok(t, await runCli(['snapshot', '-n', mid, '-p', base]), 'snapshot mid');
    await put(mid, 1000, 1); // 1 sector
    await put(mid, 5 * MiB + 512, 4096); // 8 sectors
    ok(t, await runCli(['snapshot', '-n', leaf, '-p', mid]), 'snapshot leaf');
    await put(leaf, 7 * MiB - 3, 10);
    const raw = join(dir, 'out.raw');
    ok(t, await runCli(['export', '-n', leaf, '-o', raw]), 'export');
    assertSameBytes(t, await readFile(raw), model, 'export after writes');

    const c = await runCli(['coalesce', '-n', mid]);
    ok(t, c, 'coalesce');
    t.is(c.stdout, 'Coalesced 9 sectors\n');
    ok(t, await runCli(['modify', '-n', leaf, '-p', base]), 'modify');
    t.is((await runCli(['query', '-n', leaf, '-p', '-d'])).stdout, `${base}\nchain depth: 2\n`);
    const raw2 = join(dir, 'out2.raw');
    ok(t, await runCli(['export', '-n', leaf, '-o', raw2]), 'export after relink');
    assertSameBytes(t, await readFile(raw2), model, 'export after coalesce + modify');
    const chk = await runCli(['check', '-n', leaf, '-p']);
    ok(t, chk, 'check');
    t.is(chk.stdout, `${leaf} is valid\n${base} is valid\n`);
  });
});

test('resize grows (in place with -S room, rewritten without); check stays valid', async (t) => {
  await withTempDir(async (dir) => {
    const a = join(dir, 'a.vhd');
    const b = join(dir, 'b.vhd');
    ok(t, await runCli(['create', '-n', a, '-s', '10', '-S', '100']), 'create with room');
    ok(t, await runCli(['create', '-n', b, '-s', '10']), 'create without room');
    const data = join(dir, 'd.bin');
    await writeFile(data, Buffer.alloc(5000, 0x33));
    for (const p of [a, b]) {
      ok(t, await runCli(['write', '-n', p, '-i', data, '-o', String(9 * MiB)]), 'write');
      const before = (await stat(p)).size;
      ok(t, await runCli(['resize', '-n', p, '-s', '50']), `resize ${p}`);
      t.is((await runCli(['query', '-n', p, '-v'])).stdout, '50\n');
      if (p === a) t.is((await stat(p)).size, before, 'in place: only the footer changed');
      const chk = await runCli(['check', '-n', p]);
      ok(t, chk, 'check after resize');
      t.is(chk.stdout, `${p} is valid\n`);
      const expected = Buffer.alloc(50 * MiB);
      expected.fill(0x33, 9 * MiB, 9 * MiB + 5000);
      assertSameBytes(t, await readChain(p), expected, 'content after resize');
    }
  });
});

test('check: "<path> is valid" exit 0; a corrupt image exits non-zero with the problem on stdout', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 'c.vhd');
    await createDynamic(p, 8 * MiB);
    const good = await runCli(['check', '-n', p]);
    ok(t, good, 'check');
    t.is(good.stdout, `${p} is valid\n`);
    await writeBytes(p, 512 + 40, Buffer.from([1])); // header byte: checksum mismatch
    const bad = await runCli(['check', '-n', p]);
    t.not(bad.code, 0);
    t.regex(bad.stdout, /header checksum/);
    t.regex(bad.stdout, /appears invalid/);
  });
});

test('repair restores a damaged primary footer from the copy', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 'r.vhd');
    await createDynamic(p, 8 * MiB);
    const nothing = await runCli(['repair', '-n', p]);
    ok(t, nothing, 'repair of a good image');
    t.is(nothing.stdout, `${p}: primary footer is valid, nothing to do\n`);
    const size = (await stat(p)).size;
    await writeBytes(p, size - 512, Buffer.alloc(512, 0xee));
    t.not((await runCli(['check', '-n', p])).code, 0);
    const r = await runCli(['repair', '-n', p]);
    ok(t, r, 'repair');
    t.is(r.stdout, `${p}: primary footer restored\n`);
    t.is((await runCli(['check', '-n', p])).code, 0);
    const img = await VhdImage.open(p);
    t.is(img.virtualSize, 8 * MiB);
    await img.close();
  });
});

/** Runs a command that must fail: non-zero exit, a message on stderr, and no file touched. */
async function refused(t: ExecutionContext, dir: string, args: string[], expect: { code?: number; stderr: RegExp }): Promise<void> {
  const before = await dirState(dir);
  const r = await runCli(args, { cwd: dir });
  const what = `sm-vhd ${args.join(' ')}`;
  if (expect.code !== undefined) t.is(r.code, expect.code, `${what}: exit code (stderr: ${r.stderr})`);
  else t.true(r.code !== 0, `${what}: must fail`);
  t.regex(r.stderr, expect.stderr, `${what}: stderr`);
  t.false(/\n\s+at /.test(r.stderr), `${what}: no stack trace`);
  t.deepEqual(await dirState(dir), before, `${what}: nothing written`);
}

test('bad input: non-zero exit, a clear message on stderr, and nothing written', async (t) => {
  await withTempDir(async (dir) => {
    const base = join(dir, 'base.vhd');
    const child = join(dir, 'child.vhd');
    await createDynamic(base, 10 * MiB);
    await createDifferencing(child, base);
    const corrupt = join(dir, 'corrupt.vhd');
    await createDynamic(corrupt, 10 * MiB);
    await writeBytes(corrupt, 512 + 30, Buffer.from([0x77])); // header checksum broken
    const data = join(dir, 'data.bin');
    await writeFile(data, Buffer.alloc(100, 1));

    // Missing files: exit 2.
    await refused(t, dir, ['query', '-n', 'missing.vhd', '-v'], { code: 2, stderr: /missing\.vhd: no such file/ });
    await refused(t, dir, ['check', '-n', 'missing.vhd'], { code: 2, stderr: /missing\.vhd: no such file/ });
    await refused(t, dir, ['snapshot', '-n', 'new.vhd', '-p', 'missing.vhd'], { code: 2, stderr: /no such file/ });
    await refused(t, dir, ['set', '-n', 'missing.vhd', '-f', 'hidden', '-v', '1'], { code: 2, stderr: /no such file/ });
    await refused(t, dir, ['coalesce', '-n', 'missing.vhd'], { code: 2, stderr: /no such file/ });
    await refused(t, dir, ['write', '-n', child, '-i', 'missing.bin', '-o', '0'], { code: 2, stderr: /missing\.bin/ });
    // Corrupt images.
    for (const args of [
      ['query', '-n', corrupt, '-v'],
      ['check', '-n', corrupt],
      ['set', '-n', corrupt, '-f', 'hidden', '-v', '1'],
      ['resize', '-n', corrupt, '-s', '20'],
      ['snapshot', '-n', 'new.vhd', '-p', corrupt],
      ['write', '-n', corrupt, '-i', data, '-o', '0'],
      ['export', '-n', corrupt, '-o', 'out.raw'],
      ['modify', '-n', child, '-p', corrupt],
    ]) {
      await refused(t, dir, args, { stderr: args[0] === 'check' ? /^$/ : /header checksum|corrupt/ });
    }
    // Both footers broken: repair has nothing to restore from.
    const noFooters = join(dir, 'nofooters.vhd');
    await createDynamic(noFooters, 10 * MiB);
    await writeBytes(noFooters, 0, Buffer.alloc(8));
    await writeBytes(noFooters, (await stat(noFooters)).size - 512, Buffer.alloc(8));
    await refused(t, dir, ['repair', '-n', noFooters], { stderr: /both footers are invalid/ });
    // Bad sizes and numbers.
    await refused(t, dir, ['create', '-n', 'new.vhd', '-s', 'abc'], { stderr: /bad size "abc"/ });
    await refused(t, dir, ['create', '-n', 'new.vhd', '-s', '-5'], { stderr: /-s/ });
    await refused(t, dir, ['create', '-n', 'new.vhd', '-s', '0'], { stderr: /bad size "0"/ });
    await refused(t, dir, ['create', '-n', 'new.vhd', '-s', '1.5'], { stderr: /bad size/ });
    await refused(t, dir, ['create', '-n', 'new.vhd', '-s', '99999999'], { stderr: /exceeds the maximum/ });
    await refused(t, dir, ['create', '-n', 'new.vhd', '-s', '10', '-S', 'x'], { stderr: /bad max size/ });
    await refused(t, dir, ['resize', '-n', base, '-s', '5'], { stderr: /shrinking is not supported/ });
    await refused(t, dir, ['resize', '-n', base, '-s', '-5'], { stderr: /-s/ });
    await refused(t, dir, ['write', '-n', base, '-i', data, '-o', String(10 * MiB - 50)], { stderr: /outside the virtual size/ });
    await refused(t, dir, ['write', '-n', base, '-i', data, '-o', 'abc'], { stderr: /bad offset "abc"/ });
    await refused(t, dir, ['set', '-n', base, '-f', 'hidden', '-v', '2'], { stderr: /bad value "2"/ });
    await refused(t, dir, ['set', '-n', base, '-f', 'colour', '-v', '1'], { stderr: /unknown field "colour"/ });
    // Existing targets are never overwritten.
    await refused(t, dir, ['create', '-n', base, '-s', '10'], { stderr: /already exists/ });
    await refused(t, dir, ['snapshot', '-n', base, '-p', child], { stderr: /already exists/ });
    // Missing arguments, unknown options and commands.
    await refused(t, dir, ['create', '-s', '10'], { stderr: /missing -n/ });
    await refused(t, dir, ['query', '-v'], { stderr: /missing -n/ });
    await refused(t, dir, ['snapshot', '-n', 'new.vhd'], { stderr: /missing -p/ });
    await refused(t, dir, ['create', '-n', 'new.vhd', '-s', '10', '-Z'], { stderr: /-Z/ });
    await refused(t, dir, ['create', '-n', 'new.vhd', '-s', '10', 'extra'], { stderr: /extra/ });
    await refused(t, dir, ['frobnicate', '-n', base], { code: 2, stderr: /unknown command "frobnicate"/ });
    await refused(t, dir, [], { code: 2, stderr: /usage/ });
    const help = await runCli(['--help']);
    ok(t, help, '--help');
    t.regex(help.stdout, /^usage: sm-vhd/);
    // A parent outside the child's directory, and coalescing a base.
    await refused(t, dir, ['modify', '-n', child, '-p', '/tmp/elsewhere.vhd'], { stderr: /same directory/ });
    await refused(t, dir, ['coalesce', '-n', base], { stderr: /not a differencing image/ });
  });
});
