/**
 * Coalescing a hidden node X into its parent P: inflate P, copy X's sectors
 * into P, relink X's children onto P, delete X, deflate P again (it stays a
 * read-only parent). A run of hidden nodes above P, each the only child of the
 * one below, collapses into P in one such step: one journal, one relink, one
 * metadata write, however long the run. Journaled (`coalesce`, then `relink`):
 * each step is idempotent, so recovery simply runs the rest again.
 */
import { setParent, syncRelinked } from '../lib/vhd/index.js';
import { withServedPaused } from '../lib/sr/datapath.js';
import { faultPoint } from '../lib/sr/fault.js';
import { beginJournal, endJournal, type Journal } from '../lib/sr/journal.js';
import { leftAloneFor } from '../lib/sr/unreadable.js';
import { parentNameOf } from './names.js';
import type { Nodes } from './plan.js';
import { underSrLock, type GcContext } from './context.js';
import { copyIntoParent } from './copy-into-parent.js';
import { tellToolstack } from './toolstack.js';
import { relinked, tagRelinking } from '../lib/sr/xapi-pause.js';
import { short } from './gc-log.js';

type CoalesceJournal = Extract<Journal, { kind: 'coalesce' }>;
type RelinkJournal = Extract<Journal, { kind: 'relink' }>;

/** Collapses `chain` (hidden images from P's child upwards) into P. */
export async function coalesceNode(ctx: GcContext, chain: string[], p: string): Promise<void> {
  const x = chain[chain.length - 1]!;
  const journal: CoalesceJournal = { kind: 'coalesce', vdi: x, parent: p, ...(chain.length > 1 ? { chain } : {}) };
  await beginJournal(ctx.repo.backend, journal);
  const names = chain.map((c) => `*${short(c)}`).join(', ');
  ctx.log.info(`Running VHD coalesce on ${names} into ${short(p)}`);
  await copyIntoParent(ctx, chain, p, `Coalesce of ${chain.length > 1 ? `${chain.length} images up to ${short(x)}` : short(x)}`);
  faultPoint('coalesce-copied');
  const relinked = await underSrLock(ctx, async () => {
    const { nodes } = await ctx.repo.tree();
    // An image that turned unreadable during the copy may be a child of X nobody can relink: not now.
    const alone = leftAloneFor(nodes);
    if (alone.images.has(x) || alone.images.has(p)) {
      ctx.log.warn(`Coalesce of ${names} into ${short(p)} not finished: ${alone.reasons.join('; ')}`);
      await settleParent(ctx, journal); // P only gained copies of X's blocks, which X covers: the chain reads the same
      return false;
    }
    const removes = [...chain].reverse();
    const relink: RelinkJournal = { kind: 'relink', vdi: x, parent: p, children: nodes.get(x)?.children ?? [], ...(chain.length > 1 ? { removes } : {}) };
    await beginJournal(ctx.repo.backend, relink);
    await relinkAndRemove(ctx, relink);
    await settleParent(ctx, journal);
    return true;
  });
  if (relinked) ctx.stats.coalesced += chain.length;
}

/** P keeps X's children, so it stays read-only: give back the room the copy did not use (LVM: deflate). */
async function settleParent(ctx: GcContext, j: CoalesceJournal): Promise<void> {
  if (await ctx.repo.backend.hasImage(j.parent)) await ctx.repo.backend.settleReadOnly(j.parent);
  await endJournal(ctx.repo.backend, j);
}

/**
 * Points every child of X at P, then deletes X (and the rest of its run, top
 * first: no image is left without its parent) and their records. Under the SR
 * lock, so no vdi_activate runs meanwhile (the established `relinking` /
 * `activating` exclusion): every VDI served here whose chain reads through X
 * (X's whole subtree, not only its children) is paused while the children are
 * relinked, and its datapath reopens its chain, now through P, at the unpause.
 * X's removal waits for the unpause: nobody reads through X any more then,
 * and the journal, ended last, still redoes it after a crash.
 */
async function relinkAndRemove(ctx: GcContext, j: RelinkJournal): Promise<void> {
  const { nodes } = await ctx.repo.tree();
  const readers = [...new Set([...j.children, ...subtreeOf(nodes, j.vdi)])];
  // With a toolstack, the VDIs among them are tagged `relinking` (no host activates them meanwhile),
  // and another host serving one refreshes its datapath before X goes (the established `_reload`).
  const db = ctx.toolstack;
  const tagged = db ? await tagRelinking(db, readers.filter((u) => nodes.get(u)?.hidden === false)) : new Map<string, string>();
  await ctx.repo.backend.withImagesActive([j.vdi, j.parent, ...j.children, ...(j.removes ?? [])], async () => {
    // The relinked children and P (written by the copy) are opened again; the rest stays open.
    // Nothing waits on the disk while paused: the pause syncs only what the leaves' files lack, and the
    // new headers are made durable after it, before X goes (until then X still holds what they read).
    await withServedPaused(ctx.repo, ctx.repo.uuid, readers, () => relinkChildren(ctx, j), {
      reason: 'a relink',
      changed: [...j.children, j.parent],
      durable: false,
    });
    await syncChildren(ctx, j);
    if (db && tagged.size > 0) {
      // Until every other host serving a reader reopened it, a datapath there may read through X (on LVM, through
      // its extents): X stays, and the journal with it; the next run asks those hosts again.
      const refreshed = await relinked(db, tagged).catch((err: Error) => {
        throw new Error(`${short(j.vdi)} kept: the hosts serving its readers were not all asked to refresh (${err.message}); the next run asks again`);
      });
      if (refreshed.done.length > 0) ctx.log.info(`Refreshed on the hosts serving them (VDI@host): ${refreshed.done.join(', ')}`);
      if (refreshed.failed.length > 0) throw new Error(`${short(j.vdi)} kept: not refreshed on the hosts serving ${refreshed.failed.join(', ')} (VDI@host); the next run asks them again`);
    }
    await removeCoalesced(ctx, j);
  });
}

/** Every image below `top` (whatever reads through it). */
function subtreeOf(nodes: Nodes, top: string): string[] {
  const out: string[] = [];
  const todo = [...(nodes.get(top)?.children ?? [])];
  while (todo.length > 0 && out.length <= nodes.size) {
    const u = todo.pop()!;
    out.push(u);
    todo.push(...(nodes.get(u)?.children ?? []));
  }
  return out;
}

/** The readers paused: every child of X names P (a child relinked before a crash is left as it is). */
async function relinkChildren(ctx: GcContext, j: RelinkJournal): Promise<void> {
  const { repo, log } = ctx;
  const started = Date.now();
  log.info(`Relinking ${j.children.length} children of ${short(j.vdi)} onto ${short(j.parent)}`);
  for (const child of j.children) {
    if (!(await repo.backend.hasImage(child))) continue;
    if ((await parentNameOf(repo, child)) === j.parent) continue; // done before a crash
    await setParent(repo.imagePath(child), repo.imagePath(j.parent), { sync: false });
    log.info(`  relinked ${short(child)}: parent ${short(j.vdi)} -> ${short(j.parent)}`);
    faultPoint('relink-child');
  }
  faultPoint('relink-done');
  log.info(`Relinked onto ${short(j.parent)} in ${Date.now() - started} ms (readers paused)`);
}

/** The children's new headers durable (a crash may have come between a relink and this: all of them). */
async function syncChildren(ctx: GcContext, j: RelinkJournal): Promise<void> {
  const started = Date.now();
  for (const child of j.children) if (await ctx.repo.backend.hasImage(child)) await syncRelinked(ctx.repo.imagePath(child));
  faultPoint('relink-synced');
  ctx.log.info(`Relinked headers synced in ${Date.now() - started} ms (readers running)`);
}

/** After the unpause (other hosts reading through X reopened first): X and the rest of its run go, then the journal. */
async function removeCoalesced(ctx: GcContext, j: RelinkJournal): Promise<void> {
  const { repo, log } = ctx;
  const removes = j.removes ?? [j.vdi];
  await repo.backend.discardImages(removes);
  faultPoint('coalesced-discarded');
  await repo.records.dropVdis(removes);
  log.info(`Deleted coalesced image${removes.length > 1 ? 's' : ''} ${removes.map(short).join(', ')}`);
  await tellToolstack(ctx, `relink of ${short(j.vdi)}`, async (db) => {
    for (const child of j.children) if (await repo.backend.hasImage(child)) await db.parentChanged(child, j.parent);
    for (const u of removes) await db.forget(u);
  });
  await endJournal(repo.backend, j);
}

export async function recoverRelink(ctx: GcContext, j: RelinkJournal): Promise<string> {
  await underSrLock(ctx, async () => {
    await relinkAndRemove(ctx, j);
    await settleParent(ctx, { kind: 'coalesce', vdi: j.vdi, parent: j.parent });
  });
  return `relink of ${j.vdi} completed`;
}

export async function recoverCoalesce(ctx: GcContext, j: CoalesceJournal): Promise<string> {
  const has = (u: string) => ctx.repo.backend.hasImage(u);
  // The run is removed top first, so while its top is there, all of it is.
  if ((await has(j.vdi)) && (await has(j.parent))) {
    await coalesceNode(ctx, j.chain ?? [j.vdi], j.parent); // the copy is idempotent: run it all again
    return `coalesce of ${j.vdi} redone`;
  }
  await underSrLock(ctx, () => settleParent(ctx, j));
  return `coalesce of ${j.vdi} was complete`;
}
