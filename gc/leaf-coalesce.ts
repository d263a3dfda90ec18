/**
 * Leaf-coalesce: a visible leaf L without siblings merges into its hidden parent
 * P, and P takes L's uuid, so the VDI becomes one image shorter. Offline only (L
 * not active), under the SR lock throughout. Journaled (`leaf`): until P replaces
 * L the copy is harmless (P is hidden and has no other child), so recovery redoes
 * it; after the replace only the record of P is left to drop.
 */
import { setImageHidden } from '../lib/vhd/index.js';
import { poolActivations } from '../lib/sr/activation.js';
import { faultPoint } from '../lib/sr/fault.js';
import { beginJournal, endJournal, type Journal } from '../lib/sr/journal.js';
import { underSrLock, type GcContext } from './context.js';
import { copyIntoParent } from './copy-into-parent.js';

type LeafJournal = Extract<Journal, { kind: 'leaf' }>;

export async function leafCoalesce(ctx: GcContext, leaf: string, parent: string): Promise<'done' | 'skipped'> {
  return underSrLock(ctx, async () => {
    const holder = (await poolActivations(ctx.repo.backend)).get(leaf);
    if (holder) {
      ctx.log.info(`Leaf-coalesce of ${leaf.slice(0, 8)} skipped: the VDI became active on host ${holder.host}`);
      return 'skipped';
    }
    const journal: LeafJournal = { kind: 'leaf', vdi: leaf, parent };
    await beginJournal(ctx.repo.backend, journal);
    if ((await mergeAndSwap(ctx, journal)) === 'skipped') return 'skipped';
    ctx.stats.leafCoalesced++;
    return 'done';
  });
}

async function mergeAndSwap(ctx: GcContext, j: LeafJournal): Promise<'done' | 'skipped'> {
  return ctx.repo.backend.withImagesActive([j.vdi, j.parent], () => mergeHeld(ctx, j));
}

async function mergeHeld(ctx: GcContext, j: LeafJournal): Promise<'done' | 'skipped'> {
  const { repo, log } = ctx;
  log.info(`Leaf-coalescing ${j.vdi.slice(0, 8)} into *${j.parent.slice(0, 8)}`);
  await copyIntoParent(ctx, [j.vdi], j.parent, `Leaf-coalesce of ${j.vdi.slice(0, 8)}`);
  faultPoint('leaf-copied');
  // The SR lock keeps this host's verbs out, not another host's vdi_activate: look again before the swap.
  const holder = (await poolActivations(repo.backend)).get(j.vdi);
  if (holder) {
    // The parent, still hidden, only gained copies of the leaf's own blocks: the chain reads the same.
    log.info(`Leaf-coalesce of ${j.vdi.slice(0, 8)} abandoned: the VDI became active on host ${holder.host}`);
    await endJournal(repo.backend, j);
    return 'skipped';
  }
  await setImageHidden(repo.imagePath(j.parent), false);
  faultPoint('leaf-unhidden');
  await repo.backend.replaceImage(j.parent, j.vdi);
  faultPoint('leaf-renamed');
  await finish(ctx, j);
  return 'done';
}

async function finish(ctx: GcContext, j: LeafJournal): Promise<void> {
  const meta = await ctx.repo.metadata();
  if (meta.vdis[j.parent]) {
    delete meta.vdis[j.parent];
    await ctx.repo.saveMetadata(meta);
  }
  ctx.log.info(`Leaf-coalesce done: ${j.vdi.slice(0, 8)} is now one image shorter`);
  await endJournal(ctx.repo.backend, j);
}

export async function recoverLeaf(ctx: GcContext, j: LeafJournal): Promise<string> {
  return underSrLock(ctx, async () => {
    const { repo } = ctx;
    if (!(await repo.backend.hasImage(j.parent))) {
      await setImageHidden(repo.imagePath(j.vdi), false);
      await finish(ctx, j);
      return `leaf-coalesce of ${j.vdi} was complete`;
    }
    if ((await poolActivations(repo.backend)).has(j.vdi)) {
      // The VDI is in use now: abandon; the parent, hidden again, holds nothing anyone reads alone.
      await setImageHidden(repo.imagePath(j.parent), true);
      await endJournal(repo.backend, j);
      return `leaf-coalesce of ${j.vdi} abandoned: the VDI is active`;
    }
    if ((await mergeAndSwap(ctx, j)) === 'skipped') return `leaf-coalesce of ${j.vdi} abandoned: the VDI became active`;
    ctx.stats.leafCoalesced++;
    return `leaf-coalesce of ${j.vdi} redone`;
  });
}
