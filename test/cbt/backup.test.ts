// The incremental backup flow end to end, as a backup tool runs it: a full
// copy of snapshot 1 read over NBD, writes, snapshot 2, the changed blocks
// 1 -> 2, only those read over NBD onto the copy (`sm-vhd cbt-export`), and
// the copy equal to snapshot 2 byte for byte.
import fs from 'node:fs';
import test from 'ava';
import { changedRanges, fromXapiBase64 } from '../../lib/cbt/index.js';
import { MiB, pattern } from '../helpers/model.js';
import { shortSocket } from '../helpers/nbd-vdi.js';
import { smVhd, type SmEnv } from '../helpers/sm.js';
import { withWorld, type World } from '../helpers/world.js';
import { activate, BLOCK, deactivate, enableCbt, logPath, writeThrough } from './helpers.js';

const SIZE = 64 * MiB;

/** `sm-vhd cbt-export` of the served snapshot `snap`; returns the bytes it reports read. */
async function exportServed(t: import('ava').ExecutionContext, ctx: SmEnv, snap: string, args: string[]): Promise<number> {
  const sock = shortSocket(ctx, snap);
  try {
    const r = await smVhd(['cbt-export', ...args, '-s', sock, '-e', snap]);
    t.is(r.code, 0, r.stderr);
    const m = /^read (\d+) of (\d+) bytes/m.exec(r.stdout);
    t.truthy(m, r.stdout);
    t.is(Number(m![2]), SIZE);
    t.log(r.stdout.trim());
    return Number(m![1]);
  } finally {
    fs.rmSync(sock, { force: true });
  }
}

async function served<T>(w: World, vdi: string, fn: () => Promise<T>): Promise<T> {
  await activate(w, vdi, false);
  try {
    return await fn();
  } finally {
    await deactivate(w, vdi);
  }
}

for (const format of ['raw', 'vhd'] as const) {
  test(`backup flow (${format} copy): full copy of S1, changed blocks S1 -> S2 read over NBD onto it, equal to S2`, async (t) => {
    await withWorld(async (w, ctx) => {
      const V = await w.create('V', SIZE);
      await w.fill('V', 0, 8 * MiB);
      await enableCbt(w, V);
      await activate(w, V);
      await writeThrough(w, V, [[20 * MiB, pattern(1, 3 * MiB)]]);
      const S1 = await w.snapshot('V', 'S1');

      const copy = ctx.scratch(`copy.${format}`);
      if (format === 'vhd') t.is((await smVhd(['create', '-n', copy, '-s', String(SIZE / MiB)])).code, 0);
      const full = await served(w, S1, () => exportServed(t, ctx, S1, ['-a', '-f', format, '-o', copy]));
      t.is(full, SIZE, 'the full copy reads every byte');

      // Changes while S1 is copied away: scattered, some overlapping, some unaligned.
      const writes: [number, Buffer][] = [
        [0, pattern(2, 100)],
        [3 * MiB + 7, pattern(3, 2 * BLOCK)],
        [20 * MiB + BLOCK, pattern(4, BLOCK)],
        [40 * MiB, pattern(5, MiB)],
        [SIZE - 1, pattern(6, 1)],
      ];
      await writeThrough(w, V, writes);
      const S2 = await w.snapshot('V', 'S2');
      await writeThrough(w, V, [[50 * MiB, pattern(7, MiB)]]); // after S2: not in this backup
      await deactivate(w, V);

      const text = (await w.s.call('vdi_list_changed_blocks', { vdi_uuid: S1, vdi_location: S1, args: [S2] })) as string;
      const expected = changedRanges(fromXapiBase64(text), SIZE).reduce((n, r) => n + r.length, 0);
      const cli = await smVhd(['cbt-changed', '-n', logPath(w, S1), '-t', logPath(w, S2), '-x']);
      t.is(cli.stdout.trim(), text, 'sm-vhd cbt-changed gives the verb\'s answer');

      const incremental = await served(w, S2, () => exportServed(t, ctx, S2, ['-n', logPath(w, S1), '-t', logPath(w, S2), '-f', format, '-o', copy]));
      t.is(incremental, expected, 'only the changed blocks were read');
      t.true(incremental < SIZE / 10, `${incremental} of ${SIZE} bytes read`);
      t.log(`incremental: ${incremental} bytes read of ${SIZE} (${((100 * incremental) / SIZE).toFixed(2)}%)`);

      const raw = format === 'raw' ? copy : ctx.scratch('copy-as.raw');
      if (format === 'vhd') t.is((await smVhd(['export', '-n', copy, '-o', raw])).code, 0);
      const got = fs.readFileSync(raw);
      const want = w.models.get(S2)!.read(0, SIZE);
      t.is(got.length, SIZE);
      t.true(got.equals(want), 'the copy equals S2 byte for byte');
      t.false(got.equals(w.models.get(V)!.read(0, SIZE)), 'and not V (written after S2)');
      await w.check(t);
    });
  });
}

test('sm-vhd cbt-show prints a log; bad input is refused', async (t) => {
  await withWorld(async (w) => {
    const V = await w.create('V', 4 * MiB);
    await enableCbt(w, V);
    const S1 = await w.snapshot('V', 'S1');
    const r = await smVhd(['cbt-show', '-n', logPath(w, S1), '-b']);
    t.is(r.code, 0, r.stderr);
    t.regex(r.stdout, new RegExp(`^child: ${V}$`, 'm'));
    t.regex(r.stdout, /^consistent: 1$/m);
    t.regex(r.stdout, new RegExp(`^size: ${4 * MiB}$`, 'm'));
    t.regex(r.stdout, /^changed blocks: 0 of 64$/m);
    const missing = await smVhd(['cbt-show', '-n', logPath(w, V) + '.nope']);
    t.is(missing.code, 2, 'a missing log: exit 2');
    const bad = await smVhd(['cbt-export', '-a', '-s', '/nonexistent', '-e', V, '-o', '/tmp/x', '-f', 'qcow2']);
    t.is(bad.code, 22);
    t.regex(bad.stderr, /bad format/);
  });
});
