/**
 * One collection: recover interrupted steps, then repeat until nothing is left:
 * delete garbage; else coalesce one node; else leaf-coalesce one leaf.
 */
import { activeVdiSet, poolActivations } from '../lib/sr/activation.js';
import { vdiActiveHere } from '../lib/sr/attach-record.js';
import { unpauseLeftovers } from '../lib/sr/datapath.js';
import { faultPoint } from '../lib/sr/fault.js';
import { hostId } from '../lib/sr/host-id.js';
import { journalImages, readJournals, type Journal } from '../lib/sr/journal.js';
import { recoverSrJournals } from '../lib/sr/recovery.js';
import { nodeLabel } from '../lib/sr/tree-format.js';
import { leftAloneFor } from '../lib/sr/unreadable.js';
import { coalesceNode, recoverCoalesce, recoverRelink } from './coalesce-node.js';
import { underSrLock, type GcContext } from './context.js';
import { TreeLogger } from './gc-log.js';
import { leafCoalesce, recoverLeaf } from './leaf-coalesce.js';
import { liveLeafCoalesce } from './live-leaf-coalesce.js';
import { pausedLeafCoalesce } from './paused-leaf-coalesce.js';
import { toolstackSeesServing, unpauseAllLeftBehind } from '../lib/sr/xapi-pause.js';
import { coalesceRun, findCoalesceable, findGarbage, findLeafCoalesceable, type Nodes } from './plan.js';
import { coalesceExtraSpace } from './space.js';
import { tellToolstack } from './toolstack.js';


export async function recoverGcJournals(ctx: GcContext): Promise<void> {
  await underSrLock(ctx, async () => {
    // Under the SR lock, as in a verb: a vdi_activate in progress is never mistaken for a stale hold.
    await ctx.repo.backend.settleHolds(vdiActiveHere(ctx.repo.uuid));
    await recoverSrJournals(ctx.repo);
    // Every pause is taken under the SR lock, which this run holds: a `paused` now was left by a killed verb or run.
    const db = ctx.toolstack;
    if (db) await unpauseAllLeftBehind(db).catch((err: Error) => ctx.log.warn(`XenAPI: paused VDIs not checked (${err.message})`));
  });
  // Images a killed run had discarded but not yet deleted (verbs leave the trash to the collector: it may take seconds).
  await ctx.repo.backend.emptyTrash();
  const journals = await readJournals(ctx.repo.backend);
  // A relink finishes its coalesce, so relinks go first.
  const held = <T>(j: Journal, fn: () => Promise<T>) => ctx.repo.backend.withImagesActive(journalImages(j), fn);
  for (const j of journals.filter((x) => x.kind === 'relink')) ctx.log.info(`recovery: ${await held(j, () => recoverRelink(ctx, j as never))}`);
  for (const j of await readJournals(ctx.repo.backend)) {
    if (ctx.signal.aborted) return;
    if (j.kind === 'coalesce') ctx.log.info(`recovery: ${await held(j, () => recoverCoalesce(ctx, j))}`);
    else if (j.kind === 'leaf') ctx.log.info(`recovery: ${await held(j, () => recoverLeaf(ctx, j))}`);
  }
  // A run killed with a datapath paused (relink, live leaf-coalesce): the chains are settled now, so it reopens its leaf.
  await underSrLock(ctx, () => unpauseLeftovers(ctx.repo, ctx.repo.uuid));
}

/**
 * The whole run is one hold (LVM): every image it reads stays active until the
 * run ends, so the copies outside the SR lock keep their LVs whatever verbs
 * run meanwhile, and the LVs are switched once per run, not once per step.
 */
export async function collect(ctx: GcContext): Promise<void> {
  await ctx.repo.backend.withImagesActive([], () => collectHeld(ctx));
}

async function collectHeld(ctx: GcContext): Promise<void> {
  const { repo, log } = ctx;
  const trees = new TreeLogger(log);
  const skipped = new Set<string>();
  const told = new Set<string>();
  await recoverGcJournals(ctx);
  while (!ctx.signal.aborted) {
    const sr = await repo.srRecord();
    const { records } = await repo.records.listVdis();
    const { nodes } = await repo.tree();
    // Trees holding an image unreadable now are left whole: the rest of the SR is collected.
    const alone = leftAloneFor(nodes);
    for (const why of alone.reasons) if (!told.has(why) && told.add(why)) log.warn(why);
    const skip = new Set([...skipped, ...alone.images]);
    const activations = await poolActivations(repo.backend, ctx.toolstack);
    const active = new Set(activations.keys());
    trees.logTrees(repo, sr.name_label, nodes, active, records.size);

    // Active images are kept out of the garbage, or the loop would find them again and again.
    if (findGarbage(nodes, new Set([...active, ...alone.images])).length > 0) {
      await deleteGarbage(ctx);
      continue;
    }
    const runs = findCoalesceable(nodes, skip).map((n) => ({ chain: coalesceRun(nodes, n, skip), parent: n.parent! }));
    const run = await firstWithSpace(ctx, nodes, runs, skipped);
    if (run) {
      await coalesceNode(ctx, run.chain, run.parent);
      continue;
    }
    const leaves = findLeafCoalesceable(nodes, skip);
    const here = hostId();
    let leaf: (typeof leaves)[number] | undefined;
    let pausedOn: string | undefined;
    for (const l of leaves) {
      if (records.get(l.uuid)?.on_boot === 'reset') {
        // Merging it would move the VDI's reset point (its parent) and leave the next boot nothing to reset to.
        if (!skipped.has(l.uuid)) log.info(`Leaf-coalesce of ${nodeLabel(l, true)} skipped: the VDI resets on boot`);
        skipped.add(l.uuid);
        continue;
      }
      const holder = activations.get(l.uuid);
      if (!holder || holder.host === here) {
        leaf = l; // active here: coalesced live
        break;
      }
      // Active on another host: merged while that host holds it paused, when the toolstack can reach it there.
      if (ctx.toolstack && (await seesServing(ctx, l.uuid, holder.host))) {
        leaf = l;
        pausedOn = holder.host;
        break;
      }
      const why = ctx.toolstack ? ', which the toolstack does not record as serving it' : '';
      log.info(`Leaf-coalesce of ${nodeLabel(l, true)} skipped: the VDI is active on host ${holder.host}${why}`);
      skipped.add(l.uuid);
    }
    const candidate = leaf && (await firstWithSpace(ctx, nodes, [{ chain: [leaf.uuid], parent: leaf.parent! }], skipped));
    if (leaf && candidate) {
      const outcome = pausedOn
        ? await pausedLeafCoalesce(ctx, leaf.uuid, candidate.parent, pausedOn)
        : await (active.has(leaf.uuid) ? liveLeafCoalesce : leafCoalesce)(ctx, leaf.uuid, candidate.parent);
      if (outcome === 'skipped') skipped.add(leaf.uuid);
      continue;
    }
    break;
  }
  await repo.backend.emptyTrash(); // done means the space is back
}

type Candidate = { chain: string[]; parent: string };

/** Whether the toolstack records `host` as serving the VDI (it can pause it there); a failure to ask is a no. */
async function seesServing(ctx: GcContext, vdi: string, host: string): Promise<boolean> {
  try {
    return await toolstackSeesServing(ctx.toolstack!, vdi, undefined, host);
  } catch (err) {
    ctx.log.warn(`XenAPI: cannot tell whether host ${host} serves VDI ${vdi} (${(err as Error).message})`);
    return false;
  }
}

/**
 * The first candidate the SR has room to coalesce; the others are logged and
 * skipped. A run too big for the space left is cut down to its first node.
 */
async function firstWithSpace(ctx: GcContext, nodes: Nodes, candidates: Candidate[], skip: Set<string>): Promise<Candidate | undefined> {
  for (const whole of candidates) {
    for (const c of whole.chain.length > 1 ? [whole, { ...whole, chain: whole.chain.slice(0, 1) }] : [whole]) {
      const { bytes } = await coalesceExtraSpace(c.chain.map((u) => ctx.repo.imagePath(u)), ctx.repo.imagePath(c.parent));
      if (bytes <= (await ctx.repo.backend.space()).free) return c;
      await ctx.repo.backend.emptyTrash(); // space still being given back may be enough
      const { free } = await ctx.repo.backend.space();
      if (bytes <= free) return c;
      if (c.chain.length > 1) continue;
      ctx.log.info(`Coalesce of ${nodeLabel(nodes.get(c.chain[0]!)!, false)} skipped: needs ${bytes} bytes, the SR has ${free} free`);
      skip.add(c.chain[0]!);
    }
  }
  return undefined;
}

/** Under the SR lock, re-reads the trees and the active VDIs (a verb may have run) and deletes what is still garbage. */
async function deleteGarbage(ctx: GcContext): Promise<void> {
  await underSrLock(ctx, async () => {
    const { repo, log } = ctx;
    const { nodes } = await repo.tree();
    // Not only the active images themselves: also the parents they read through; and no tree with an unreadable image.
    const garbage = findGarbage(nodes, new Set([...(await activeVdiSet(repo.backend)), ...leftAloneFor(nodes).images]));
    if (garbage.length === 0) return;
    log.info(`Found ${garbage.length} VDIs for deletion:\n${garbage.map((u) => `  ${nodeLabel(nodes.get(u)!, false)}`).join('\n')}`);
    // Records first: a crash between the removals then leaves only hidden images
    // without records (the next scan introduces them as base copies, the next
    // run deletes them), never a record without its image.
    await repo.records.dropVdis(garbage);
    for (const u of garbage) {
      await repo.backend.removeImage(u); // children before parents: no image is ever left without its parent
      log.info(`Deleted ${u.slice(0, 8)}`);
      ctx.stats.deleted++;
      faultPoint('garbage-removed');
    }
    await tellToolstack(ctx, 'deleted images', async (db) => {
      for (const u of garbage) await db.forget(u);
    });
  });
}
