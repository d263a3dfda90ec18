// Changed-block tracking across crashes: the verbs killed (SIGKILL) at each
// fault point of a snapshot, a delete, a data destroy, an enable and a
// disable, with the VDI served and written through NBD throughout; and the
// datapath itself killed with its log dirty. After recovery a new snapshot is
// taken, and the blocks changed since the last good snapshot must include
// every block written since: the log may list more, never fewer.
import test, { type ExecutionContext } from 'ava';
import { MiB, pattern } from '../helpers/model.js';
import { before, callVerb, recoverAsHost, snapshotOutcome, vdiArgs } from '../helpers/crash.js';
import { datapathPids, waitFor } from '../helpers/sm.js';
import { journals, readMetadata } from '../helpers/sr-state.js';
import { withWorld, type World } from '../helpers/world.js';
import { activate, BLOCK, blocksTouched, changedBlocks, deactivate, enableCbt, hasLog, readVdiLog, union, writeThrough } from '../cbt/helpers.js';

const SIZE = 16 * MiB;
const BLOCKS = SIZE / BLOCK;

/** Tracks what was written since the last snapshot that serves as a backup's base. */
class Backup {
  since: number[] = [];
  private n = 0;
  constructor(
    private readonly w: World,
    public base: string,
  ) {}

  /** Two writes through the datapath at spots that move from round to round. */
  async write(): Promise<void> {
    const k = this.n++;
    const a = ((k * 37) % BLOCKS) * BLOCK + 100;
    const b = ((k * 11 + 5) % BLOCKS) * BLOCK + BLOCK - 3;
    await writeThrough(this.w, this.w.uuid('V'), [
      [a, pattern(k, 2000)],
      [b, pattern(k + 1000, 10)],
    ]);
    this.since = union(this.since, blocksTouched(a, 2000), blocksTouched(b, 10));
  }

  /** A new snapshot: every block written since the base is listed; it becomes the base. */
  async verify(t: ExecutionContext, what: string): Promise<void> {
    const T = await this.w.snapshot('V', `T-${what}`);
    const listed = await changedBlocks(this.w, this.base, T);
    t.deepEqual(this.since.filter((b) => !listed.includes(b)), [], `${what}: no written block is missing from ${listed.length} listed`);
    this.base = T;
    this.since = [];
  }
}

/** Recovery as a host does it, then a scan (a verb on the SR: whatever a killed verb left paused is unpaused). */
async function recover(w: World, i: number): Promise<void> {
  await recoverAsHost(w, i);
  await w.scan();
  if (journals(w.ctx).length > 0) throw new Error(`journals left after recovery: ${journals(w.ctx).join(', ')}`);
}

async function kill(t: ExecutionContext, w: World, verb: string, extra: Record<string, unknown>, point: string): Promise<void> {
  const r = await callVerb(w, verb, extra, { ...w.ctx.env, SM_FAULT: point });
  t.is(r.signal, 'SIGKILL', `${verb} at ${point}: killed (exit ${r.code}: ${r.stderr})`);
}

const SNAPSHOT_POINTS = [
  'snapshot-journaled',
  'snapshot-renamed',
  'snapshot-leaf-created',
  'snapshot-child-created',
  'snapshot-base-hidden',
  'cbt-snapshot-log-written',
  'cbt-parent-relinked',
  'snapshot-metadata-written',
];

test('a snapshot of a served, tracked VDI killed at each fault point: no written block goes unlisted', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', SIZE);
    await enableCbt(w, V);
    const backup = new Backup(w, await w.snapshot('V', 'A'));
    await activate(w, V);
    for (const [i, point] of SNAPSHOT_POINTS.entries()) {
      await backup.write();
      const b = before(ctx);
      await kill(t, w, 'vdi_snapshot', vdiArgs(w, 'V'), point);
      await recover(w, i);
      snapshotOutcome(w, b, 'V', `killed-at-${point}`, 'either');
      await backup.write(); // through the datapath again, on whatever leaf and log recovery left
      await backup.verify(t, point);
    }
    await deactivate(w, V);
    t.true((await readVdiLog(w, V)).consistent);
    await w.check(t);
  });
});

test('deleting a tracked snapshot (its log merged) and destroying a snapshot\'s data, killed at each fault point', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', SIZE);
    await enableCbt(w, V);
    const backup = new Backup(w, await w.snapshot('V', 'A'));
    await activate(w, V);
    for (const [i, point] of ['delete-journaled', 'cbt-log-merged', 'delete-image-gone', 'records-dropped'].entries()) {
      await backup.write();
      const M = await w.snapshot('V', `M-${point}`); // between the base and the next snapshot
      await backup.write();
      await kill(t, w, 'vdi_delete', vdiArgs(w, `M-${point}`), point);
      await recover(w, i);
      t.false(hasLog(w, M), `${point}: the delete was completed, the log merged away`);
      w.models.delete(M);
      await backup.verify(t, `delete killed at ${point}`);
    }
    for (const [i, point] of ['delete-journaled', 'delete-image-gone'].entries()) {
      await backup.write();
      const D = await w.snapshot('V', `D-${point}`);
      await backup.write();
      await kill(t, w, 'vdi_data_destroy', vdiArgs(w, `D-${point}`), point);
      await recover(w, i);
      t.is(readMetadata(ctx).vdis[D]?.type, 'cbt_metadata', `${point}: the data destroy was completed`);
      t.true(hasLog(w, D), `${point}: its log stays`);
      w.models.delete(D);
      await backup.verify(t, `data destroy killed at ${point}`);
    }
    await deactivate(w, V);
    await w.check(t);
  });
});

test('enable and disable killed between the log and the record: the scan sets cbt_enabled from the log', async (t) => {
  await withWorld(async (w) => {
    const E = await w.create('E', SIZE);
    await kill(t, w, 'vdi_enable_cbt', vdiArgs(w, 'E'), 'cbt-enable-log-created');
    t.true(hasLog(w, E));
    const cbtOf = async () => ((await w.scan()) as { uuid: string; cbt_enabled: boolean }[]).find((r) => r.uuid === E)?.cbt_enabled;
    t.true(await cbtOf(), 'enabled after the scan');
    await kill(t, w, 'vdi_disable_cbt', vdiArgs(w, 'E'), 'cbt-disable-log-removed');
    t.false(hasLog(w, E));
    t.false(await cbtOf(), 'disabled after the scan');
    await w.check(t);
  });
});

test('the datapath killed with its log dirty: every block counts as changed, never fewer', async (t) => {
  await withWorld(async (w, ctx) => {
    const V = await w.create('V', SIZE);
    await enableCbt(w, V);
    const A = await w.snapshot('V', 'A');
    await activate(w, V);
    await writeThrough(w, V, [[3 * BLOCK, pattern(1, 10)]]);
    const [pid] = datapathPids(ctx.root);
    t.truthy(pid, 'the datapath runs');
    process.kill(pid, 'SIGKILL');
    await waitFor('the datapath to die', () => datapathPids(ctx.root).length === 0, 10_000);
    t.false((await readVdiLog(w, V)).consistent, 'the log was left inconsistent');
    const all = Array.from({ length: BLOCKS }, (_, i) => i);
    t.deepEqual(await changedBlocks(w, A, V), all, 'an inconsistent log lists every block');

    // Served again: the new datapath settles the log (every block) before its first write.
    await deactivate(w, V);
    await activate(w, V);
    await writeThrough(w, V, [[5 * BLOCK, pattern(2, 10)]]);
    await deactivate(w, V);
    const log = await readVdiLog(w, V);
    t.true(log.consistent, 'closed cleanly this time');
    const B = await w.snapshot('V', 'B');
    t.deepEqual(await changedBlocks(w, A, B), all, 'the crash is not forgotten by a later clean close');

    // Killed again, then snapshotted without being served again: the snapshot's log lists every block.
    await activate(w, V);
    await writeThrough(w, V, [[7 * BLOCK, pattern(3, 10)]]);
    process.kill(datapathPids(ctx.root)[0], 'SIGKILL');
    await waitFor('the datapath to die', () => datapathPids(ctx.root).length === 0, 10_000);
    const C = await w.snapshot('V', 'C');
    t.deepEqual(await changedBlocks(w, B, C), all);
    t.true((await readVdiLog(w, C)).consistent, "the snapshot's log is settled");
    await deactivate(w, V);
    await w.check(t);
  });
});
