#!/usr/bin/env node
/**
 * sm-gc: the coalescing garbage collector of one SR.
 *   -u SR -g         run one collection in the foreground until no work is left
 *   -u SR -a         abort a running collection and wait for it to stop
 *   -u SR -q         say whether a collection is running
 *   -u SR --dry-run  print the plan, change nothing
 * The SR must be attached on this host (the record sr_attach leaves).
 */
import { parseArgs } from 'node:util';
import { initLog, describeError } from '../lib/log/index.js';
import { activeVdiSet } from '../lib/sr/activation.js';
import { attachedBackend, readAttachRecord } from '../lib/sr/attach-record.js';
import { isUuid } from '../lib/sr/ids.js';
import { acquireLock, askHolder, isLockHeld } from '../lib/sr/lock.js';
import { Repository } from '../lib/sr/repository.js';
import { formatForest, nodeLabel } from '../lib/sr/tree-format.js';
import { leftAloneFor } from '../lib/sr/unreadable.js';
import { collect } from './collector.js';
import type { GcContext } from './context.js';
import { openGcToolstack } from './toolstack.js';
import { coalesceRun, findCoalesceable, findGarbage, findLeafCoalesceable } from './plan.js';

const USAGE = 'usage: sm-gc -u SR_UUID (-g | -a | -q | --dry-run)\n';

/** The GC runs on the SR master only; on a slave it says so and leaves the SR alone. */
async function attachedAsSlave(sr: string, say: (line: string) => void): Promise<boolean> {
  if ((await readAttachRecord(sr))?.role !== 'slave') return false;
  say(`SR ${sr} is attached here as a pool slave: the GC runs on the master`);
  return true;
}

async function runGc(sr: string): Promise<number> {
  const log = initLog('SMGC');
  if (await attachedAsSlave(sr, (line) => log.info(line))) return 0;
  const lock = await acquireLock(sr, 'gc_active');
  if (!lock) {
    log.info('Another GC instance already active, exiting');
    return 0;
  }
  const started = Date.now();
  const abort = new AbortController();
  let abortedAt = 0;
  const stop = (why: string) => {
    if (abort.signal.aborted) return;
    log.info(`Abort requested (${why})`);
    abortedAt = Date.now();
    abort.abort();
  };
  // How long the collector took to stop once asked: what an operator waits for beyond process start-up.
  const abortLatency = () => `, ${Date.now() - abortedAt} ms after the request`;
  void lock.abortRequested.then(() => stop('sm-gc -a or sr_detach'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  const stats = { deleted: 0, coalesced: 0, leafCoalesced: 0, bytesCopied: 0, copyMs: 0 };
  try {
    log.info(`=== SR ${sr}: gc ===`);
    const repo = new Repository(await attachedBackend(sr));
    const toolstack = await openGcToolstack(sr, log);
    const ctx: GcContext = { repo, log, signal: abort.signal, stats, ...(toolstack ? { toolstack: toolstack.db } : {}) };
    try {
      await collect(ctx);
    } finally {
      await toolstack?.close();
    }
    const rate = stats.copyMs > 0 ? (stats.bytesCopied / 1048576 / (stats.copyMs / 1000)).toFixed(1) : '0';
    log.info(
      `GC summary: deleted ${stats.deleted}, coalesced ${stats.coalesced}, leaf-coalesced ${stats.leafCoalesced}; ` +
        `copied ${(stats.bytesCopied / 1048576).toFixed(1)} MiB in ${stats.copyMs} ms (${rate} MiB/s); total ${Date.now() - started} ms`,
    );
    log.info(abort.signal.aborted ? `GC process exiting: aborted${abortLatency()}` : 'GC process exiting, no work left');
    return 0;
  } catch (err) {
    if (abort.signal.aborted) {
      log.info(`GC process exiting: aborted${abortLatency()} (interrupted steps resume on the next run)`);
      return 0;
    }
    log.error(`GC failed:\n${describeError(err)}`);
    log.info('GC process exiting with an error');
    return 1;
  } finally {
    await lock.release();
  }
}

async function abortGc(sr: string): Promise<number> {
  if ((await askHolder(sr, 'gc_active', 'abort')) === undefined) {
    process.stdout.write('No GC running\n');
    return 0;
  }
  const deadline = Date.now() + 60_000;
  while (await isLockHeld(sr, 'gc_active')) {
    if (Date.now() > deadline) {
      process.stderr.write('sm-gc: the GC did not stop within 60 s\n');
      return 1;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  process.stdout.write('GC aborted\n');
  return 0;
}

async function dryRun(sr: string): Promise<number> {
  if (await attachedAsSlave(sr, (line) => process.stdout.write(line + '\n'))) return 0;
  const repo = new Repository(await attachedBackend(sr));
  const meta = await repo.srRecord();
  const { records } = await repo.records.listVdis();
  const { nodes } = await repo.tree();
  const active = await activeVdiSet(repo.backend);
  const out = (s: string) => process.stdout.write(s + '\n');
  for (const line of formatForest({ uuid: sr, name_label: meta.name_label }, nodes, active, records.size)) out(line);
  const alone = leftAloneFor(nodes);
  for (const why of alone.reasons) out(why);
  const garbage = findGarbage(nodes, new Set([...active, ...alone.images]));
  const coalesce = findCoalesceable(nodes, alone.images);
  const leaves = findLeafCoalesceable(nodes, alone.images);
  out(`plan:`);
  for (const u of garbage) out(`  delete garbage ${nodeLabel(nodes.get(u)!, false)}`);
  const inRun = new Set<string>();
  for (const n of coalesce) {
    if (inRun.has(n.uuid)) continue;
    const run = coalesceRun(nodes, n, alone.images);
    run.forEach((u) => inRun.add(u));
    const top = nodes.get(run[run.length - 1]!)!;
    const what = run.map((u) => nodeLabel(nodes.get(u)!, false)).join(' + ');
    out(`  coalesce ${what} into ${n.parent!.slice(0, 8)}, then relink its ${top.children.length} children`);
  }
  for (const n of leaves) {
    out(active.has(n.uuid) ? `  skip leaf-coalesce of ${nodeLabel(n, true)}: active` : `  leaf-coalesce ${nodeLabel(n, false)} into ${n.parent!.slice(0, 8)}`);
  }
  if (!garbage.length && !coalesce.length && !leaves.length) out('  nothing to do');
  out('(later steps may follow once these are done)');
  return 0;
}

async function main(argv: string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: { u: { type: 'string' }, g: { type: 'boolean' }, a: { type: 'boolean' }, q: { type: 'boolean' }, 'dry-run': { type: 'boolean' } },
      strict: true,
    }));
  } catch (err) {
    process.stderr.write(`sm-gc: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const sr = values.u;
  if (typeof sr !== 'string' || !isUuid(sr)) {
    process.stderr.write(`sm-gc: -u needs an SR uuid\n${USAGE}`);
    return 2;
  }
  try {
    if (values.g) return await runGc(sr.toLowerCase());
    if (values.a) return await abortGc(sr.toLowerCase());
    if (values.q) {
      process.stdout.write(`Currently running: ${(await isLockHeld(sr.toLowerCase(), 'gc_active')) ? 'True' : 'False'}\n`);
      return 0;
    }
    if (values['dry-run']) return await dryRun(sr.toLowerCase());
  } catch (err) {
    process.stderr.write(`sm-gc: ${(err as Error).message}\n`);
    return 1;
  }
  process.stderr.write(USAGE);
  return 2;
}

process.exitCode = await main(process.argv.slice(2));
