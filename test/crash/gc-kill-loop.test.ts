// sm-gc killed with SIGKILL at random instants during a coalesce of a few
// hundred MiB, re-run each time, then left to finish: the same end state as an
// undisturbed run, every VDI byte-identical to the model, and the chain readable
// and valid after every single kill.
import { spawn } from 'node:child_process';
import test from 'ava';
import { MiB } from '../helpers/model.js';
import { gc, makeSmEnv, readSmlog, sleep, SM_GC } from '../helpers/sm.js';
import { checkProblems, diffVdi, journals } from '../helpers/sr-state.js';
import { World } from '../helpers/world.js';

/** Deterministic delays, so a failure can be replayed. */
function* delays(seed: number, min: number, max: number): Generator<number> {
  let x = seed;
  for (;;) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    yield min + (x % (max - min));
  }
}

test('sm-gc killed at random instants, ten times, then run to the end', async (t) => {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx);
  try {
    // B1 (32 MiB) <- B2 (288 MiB) <- V: a 288 MiB coalesce, then a leaf-coalesce.
    await w.create('V', 512 * MiB);
    await w.fill('V', 0, 32 * MiB);
    await w.snapshot('V', 'S1');
    await w.fill('V', 16 * MiB, 288 * MiB);
    await w.snapshot('V', 'S2');
    await w.fill('V', 400 * MiB + 777, 5 * MiB);
    await w.delete('S1');
    await w.delete('S2');
    t.is(await w.shape(), '*?(*?(V))');

    const V = w.uuid('V');
    const model = w.models.get(V)!;
    const seq = delays(20261122, 150, 1700);
    let midRun = 0;
    for (let i = 0; i < 10; i++) {
      const delay = seq.next().value as number;
      // The rate cap keeps the copy ~2 s long on any machine, so the kill instants land in it.
      const env = { ...ctx.env, SM_GC_MAX_MIBPS: '150' };
      const child = spawn(process.execPath, [SM_GC, '-u', ctx.sr, '-g'], { env, stdio: 'ignore' });
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })));
      await Promise.race([sleep(delay), exited]);
      child.kill('SIGKILL');
      const end = await exited;
      if (end.signal === 'SIGKILL') midRun++;
      else t.is(end.code, 0, `run ${i} ended by itself, well`);
      t.log(`kill ${i}: after ${delay} ms, ${end.signal === 'SIGKILL' ? 'killed mid-run' : 'had already finished'}; journals: ${journals(ctx).join(', ') || 'none'}`);
      // After every kill: the chain passes check and still reads as the model.
      t.deepEqual(await checkProblems(ctx), [], `after kill ${i}: every image passes check`);
      t.is(await diffVdi(ctx, V, model), undefined, `after kill ${i}: V reads as the model`);
    }
    t.true(midRun >= 5, `most kills hit a running collector (${midRun} of 10)`);

    await gc(ctx);
    t.is(await w.shape(), 'V', 'the same end state as an undisturbed run: one image');
    await w.scan();
    await w.check(t, { scanned: true });
    t.regex(readSmlog(ctx), /SMGC: \[\d+\] recovery: (coalesce|relink|leaf-coalesce) of/);
  } finally {
    await w.close();
    await ctx.cleanup();
  }
});
