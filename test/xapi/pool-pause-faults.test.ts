// Host A's vdi_snapshot killed (SIGKILL, by SM_FAULT) at each of its steps
// while host B, which writes to the VDI over NBD, is held paused through the
// toolstack (pool-world.ts: the stand-in runs B's real tapdisk-pause plugin).
// B's write in flight waits, without an error. A's next sr_scan recovers the
// journal and, finding `paused` left behind, has B unpause: the held write
// completes, B reads every write it made, and the SR is whole.
import test from 'ava';
import { MiB, pattern } from '../helpers/model.js';
import { openNbd } from '../helpers/nbd-vdi.js';
import { callDriver, request, sleep, xml } from '../helpers/sm.js';
import { checkProblems, journals } from '../helpers/sr-state.js';
import { activeOnB, createOnA, vdiArgs, withPool } from './pool-world.js';

const POINTS = ['snapshot-journaled', 'snapshot-renamed', 'snapshot-leaf-created', 'snapshot-metadata-written'];

test("A's vdi_snapshot killed at each step with B paused: B's held write waits without an error; A's sr_scan recovers and unpauses B", async (t) => {
  await withPool(async (p) => {
    for (const point of POINTS) {
      const V = await createOnA(p, 8 * MiB);
      await activeOnB(p, V);
      const c = await openNbd(p.b, V);
      await c.write(0, pattern(1, MiB));
      p.pluginRuns.length = 0;
      const killed = await callDriver('vdi_snapshot', request(p.a, 'vdi_snapshot', vdiArgs(V)), { ...p.a.env, SM_FAULT: point });
      t.is(killed.signal, 'SIGKILL', `${point}: killed there`);
      t.deepEqual(p.pluginRuns, ['pause -> True'], `${point}: B was paused and not unpaused`);
      const sm = p.xapi.vdiByUuid(V)!.sm_config as Record<string, string>;
      t.is(sm.paused, 'true', `${point}: paused left in the database`);

      let done = false;
      const held = c.write(2 * MiB, pattern(2, MiB)).then(() => (done = true));
      await sleep(1500);
      t.false(done, `${point}: B's write waits while paused`);

      await xml(p.a, 'sr_scan');
      await held; // rejects if B's client saw an error
      t.deepEqual(p.pluginRuns, ['pause -> True', 'unpause -> True'], `${point}: sr_scan had B unpause`);
      t.false('paused' in (p.xapi.vdiByUuid(V)!.sm_config as Record<string, string>), `${point}: paused is gone`);
      t.deepEqual(journals(p.a), [], `${point}: the journal is recovered`);
      t.deepEqual(await checkProblems(p.a), [], `${point}: every image passes check`);
      t.true((await c.read(0, MiB)).equals(pattern(1, MiB)), `${point}: B reads the write before the kill`);
      t.true((await c.read(2 * MiB, MiB)).equals(pattern(2, MiB)), `${point}: and the one held meanwhile`);
      c.close();
      // The VDI takes a snapshot again, paused on B as usual.
      await xml(p.a, 'vdi_snapshot', vdiArgs(V));
      t.deepEqual(p.pluginRuns.slice(2), ['pause -> True', 'unpause -> True'], `${point}: the next snapshot works`);
      await p.onB('vdi_deactivate', vdiArgs(V));
      await p.onB('vdi_detach', vdiArgs(V));
    }
  });
});
