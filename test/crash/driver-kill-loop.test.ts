// Driver verbs killed with SIGKILL at random instants, many times: each round a
// random verb (create, snapshot, clone, resize, delete, scan, sr_attach) on a
// random VDI is killed after a random delay within that verb's measured
// duration (past most of the process start-up), then recovered as a host would (sr_attach or sr_scan). Whatever the
// instant, the change is all or nothing: every VDI reads as the model, every
// image passes check, nothing is leaked, metadata matches the images; and at
// the end the SR still takes a snapshot and a GC.
// Seeded: SM_SEED=<n> replays a run; SM_SOAK=<n> runs n rounds instead of the default.
import test from 'ava';
import { assertRecoveredAndUsable, before, callVerb, createOutcome, recoverAsHost, resizeOutcome, snapshotOutcome, vdiArgs, withSr } from '../helpers/crash.js';
import { MiB } from '../helpers/model.js';
import { createArgs, gc, type XmlCallResult } from '../helpers/sm.js';
import { hostLeftovers, journals, readMetadata, readTree } from '../helpers/sr-state.js';
import type { World } from '../helpers/world.js';

const ROUNDS = Number(process.env.SM_SOAK ?? 30);
const SEED = Number(process.env.SM_SEED ?? Date.now() % 1_000_000);
/** Keeps the chains short and the SR small: a GC every few rounds, deletes preferred above this many VDIs. */
const GC_EVERY = 8;
const MAX_VDIS = 7;

const VERBS = ['vdi_create', 'vdi_snapshot', 'vdi_clone', 'vdi_resize', 'vdi_delete', 'sr_scan', 'sr_attach'] as const;
type VerbName = (typeof VERBS)[number];

/** mulberry32: small, seeded, good enough to pick verbs and instants. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
}

interface Round {
  verb: VerbName;
  extra: Record<string, unknown>;
  /** Updates the model from what recovery left; true if the change happened. */
  outcome(w: World, b: ReturnType<typeof before>): Promise<boolean>;
}

function roundFor(w: World, verb: VerbName, target: string, label: string): Round {
  const on = vdiArgs(w, target);
  switch (verb) {
    case 'vdi_create':
      return { verb, extra: { args: createArgs(4 * MiB, label), vdi_type: 'user' }, outcome: async (w2, b) => createOutcome(w2, b, 4 * MiB, label, 'either') };
    case 'vdi_snapshot':
    case 'vdi_clone':
      return { verb, extra: on, outcome: async (w2, b) => snapshotOutcome(w2, b, target, label, 'either') };
    case 'vdi_resize': {
      const size = w.models.get(on.vdi_uuid)!.size + 2 * MiB;
      return { verb, extra: { ...on, args: [String(size)] }, outcome: (w2) => resizeOutcome(w2, target, size) };
    }
    case 'vdi_delete':
      return {
        verb,
        extra: on,
        async outcome(w2) {
          // All or nothing: the record and the visible image go together.
          const hasRecord = readMetadata(w2.ctx).vdis[on.vdi_uuid] !== undefined;
          const node = (await readTree(w2.ctx)).get(on.vdi_uuid);
          const visible = node !== undefined && !node.hidden;
          if (hasRecord !== visible) throw new Error(`delete of ${target} half done: record ${hasRecord}, visible image ${visible}`);
          if (!visible) w2.forget(target);
          return !visible;
        },
      };
    default:
      return { verb, extra: {}, outcome: async () => true };
  }
}

test('driver verbs killed at random instants, recovered each time as a host would', async (t) => {
  t.timeout(10 * 60_000);
  await withSr(async (w, ctx) => {
    const rnd = random(SEED);
    const pick = <T>(items: readonly T[]): T => items[Math.floor(rnd() * items.length)];
    const tag = (i: number) => `[SM_SEED=${SEED} round ${i}]`;
    t.log(`SM_SEED=${SEED}, ${ROUNDS} rounds`);

    // Each verb's duration, measured on one undisturbed call: kills are drawn from it.
    const took = new Map<VerbName, number>();
    for (const verb of VERBS) {
      const target = verb === 'vdi_delete' ? (await w.snapshot('V', 'to-measure-delete'), 'to-measure-delete') : 'V';
      const round = roundFor(w, verb, target, `measured-${verb}`);
      const b = before(ctx);
      const r = await callVerb(w, verb, round.extra);
      t.is(r.code, 0, `${verb} runs undisturbed: ${r.stderr}`);
      t.true(await round.outcome(w, b), `${verb} undisturbed: done`);
      took.set(verb, r.ms);
    }
    // Most of a call is the process starting (measured on sr_update, which does next to nothing):
    // kills are drawn from a little before its end to a little after the verb's own end.
    // (The least of three calls: a single one is noisy on a loaded machine.)
    let startup = Infinity;
    for (let k = 0; k < 3; k++) startup = Math.min(startup, (await callVerb(w, 'sr_update', {})).ms);
    const killAt = (verb: VerbName) => {
      const from = 0.8 * Math.min(startup, took.get(verb)!);
      return Math.floor(from + rnd() * (took.get(verb)! * 1.05 - from));
    };
    t.log(`measured (ms): start-up ${startup}, ${[...took].map(([v, ms]) => `${v} ${ms}`).join(', ')}`);

    const tally = new Map<string, { killed: number; finished: number; midChange: number; committed: number }>();
    for (let i = 0; i < ROUNDS; i++) {
      const vdis = [...w.models.keys()].map((u) => w.names[u]);
      const others = vdis.filter((n) => n !== 'V');
      const verb: VerbName = others.length >= MAX_VDIS ? 'vdi_delete' : pick(VERBS.filter((v) => v !== 'vdi_delete' || others.length > 0));
      const target = verb === 'vdi_delete' ? pick(others) : pick(vdis);
      const round = roundFor(w, verb, target, `r${i}-${verb}`);
      const delay = killAt(verb);
      await w.fill(target === 'V' || verb === 'vdi_delete' ? 'V' : target, Math.floor(rnd() * 3) * MiB + 512, 64 * 1024);

      const b = before(ctx);
      const r: XmlCallResult = await callVerb(w, verb, round.extra, ctx.env, { killAfterMs: Math.max(delay, 1) });
      const killed = r.signal === 'SIGKILL';
      const midChange = journals(ctx).length > 0; // killed after its journal was written: recovery has work to do
      if (!killed) {
        t.true(r.code === 0 && r.response.kind !== 'fault', `${tag(i)} ${verb} ended by itself, well: ${r.stderr}`);
        // The measurement may have run on a busier machine: a call that ended first bounds both figures from above.
        took.set(verb, Math.min(took.get(verb)!, r.ms));
        startup = Math.min(startup, r.ms);
      }
      const by = await recoverAsHost(w, Math.floor(rnd() * 2));
      const done = await round.outcome(w, b).catch((err: Error) => t.fail(`${tag(i)} ${verb} after a kill at ${delay} ms: ${err.message}`));
      if (!killed) t.true(done, `${tag(i)} ${verb} answered, so its change is there`);
      const count = tally.get(verb) ?? { killed: 0, finished: 0, midChange: 0, committed: 0 };
      count[killed ? 'killed' : 'finished']++;
      if (midChange) count.midChange++;
      if (killed && done === true) count.committed++;
      tally.set(verb, count);

      t.deepEqual(journals(ctx), [], `${tag(i)} ${verb} killed at ${delay} ms: recovered by ${by}`);
      await w.check(t, { scanned: by === 'sr_scan' });
      t.deepEqual(hostLeftovers(ctx), [], `${tag(i)} nothing left behind on the host`);
      if ((i + 1) % GC_EVERY === 0) {
        t.is((await gc(ctx)).code, 0, `${tag(i)} GC`);
        await w.scan();
        await w.check(t, { scanned: true });
      }
    }
    await assertRecoveredAndUsable(t, w, `[SM_SEED=${SEED}] at the end`, 0, false);

    const kills = [...tally.values()].reduce((n, c) => n + c.killed, 0);
    t.log(
      `by verb: killed / ended before the kill / killed with its journal written / killed after its change was made: ${[...tally]
        .sort()
        .map(([v, c]) => `${v} ${c.killed}/${c.finished}/${c.midChange}/${c.committed}`)
        .join(', ')}`,
    );
    t.true(kills >= ROUNDS / 3, `${tag(ROUNDS)} most rounds killed a running driver (${kills} of ${ROUNDS})`);
  });
});
