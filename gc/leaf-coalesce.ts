/**
 * Leaf-coalesce: a visible leaf L without siblings merges into its hidden parent
 * P, and P takes L's uuid, so the VDI becomes one image shorter. Offline (L
 * not active; an L active here: live-leaf-coalesce.ts). The copy runs outside the SR lock, so verbs never wait for it:
 * until P replaces L the copy is harmless (P is hidden and has no other child).
 * Then, under the lock, the tree is looked at again: L must still be P's only
 * child, a leaf, inactive, not activated meanwhile (vdi_activate marks the
 * journal), and in no tree left alone for an unreadable image; otherwise the
 * swap is abandoned. Journaled (`leaf`): recovery redoes the copy; after the
 * replace only the record of P is left to drop.
 */
import { setImageHidden } from '../lib/vhd/index.js';
import { poolActivations } from '../lib/sr/activation.js';
import { hostId } from '../lib/sr/host-id.js';
import { faultPoint } from '../lib/sr/fault.js';
import { beginJournal, endJournal, journalName, type Journal } from '../lib/sr/journal.js';
import { leftAloneFor } from '../lib/sr/unreadable.js';
import { underSrLock, type GcContext } from './context.js';
import { copyIntoParent } from './copy-into-parent.js';
import { tellToolstack } from './toolstack.js';
import { uuidOfImageName } from '../lib/sr/repository.js';
import { readImageSummary } from '../lib/vhd/index.js';
import { short } from './gc-log.js';

type LeafJournal = Extract<Journal, { kind: 'leaf' }>;

export async function leafCoalesce(ctx: GcContext, leaf: string, parent: string): Promise<'done' | 'skipped'> {
  const journal: LeafJournal = { kind: 'leaf', vdi: leaf, parent };
  const started = await underSrLock(ctx, async () => {
    const why = await whyNot(ctx, journal);
    if (why) {
      ctx.log.info(`Leaf-coalesce of ${short(leaf)} skipped: ${why}`);
      return false;
    }
    await beginJournal(ctx.repo.backend, journal);
    return true;
  });
  if (!started) return 'skipped';
  return mergeAndSwap(ctx, journal);
}

/** Copy outside the lock, then look again and swap under it. */
async function mergeAndSwap(ctx: GcContext, j: LeafJournal): Promise<'done' | 'skipped'> {
  const { repo, log } = ctx;
  return repo.backend.withImagesActive([j.vdi, j.parent], async () => {
    log.info(`Leaf-coalescing ${short(j.vdi)} into *${short(j.parent)}`);
    await copyIntoParent(ctx, [j.vdi], j.parent, `Leaf-coalesce of ${short(j.vdi)}`);
    faultPoint('leaf-copied');
    return underSrLock(ctx, async () => {
      const why = (await abandonedMark(ctx, j)) ?? (await whyNot(ctx, j, true));
      if (why) {
        // The parent, still hidden, only gained copies of the leaf's own blocks: the chain reads the same.
        log.info(`Leaf-coalesce of ${short(j.vdi)} abandoned: ${why}`);
        await endJournal(repo.backend, j);
        return 'skipped';
      }
      await swapIntoParent(ctx, j);
      return 'done';
    });
  });
}

/**
 * Under the SR lock, the parent (holding every sector of the leaf) becomes the
 * VDI: unhidden, it takes the leaf's name (the leaf is discarded), and its own
 * record goes. The offline leaf-coalesce; the live one runs the same steps
 * around its final copy, with the datapath paused only for what needs it.
 */
export async function swapIntoParent(ctx: GcContext, j: LeafJournal): Promise<void> {
  await setImageHidden(ctx.repo.imagePath(j.parent), false);
  faultPoint('leaf-unhidden');
  await renameIntoLeaf(ctx, j);
  await finishSwap(ctx, j);
}

/** P takes L's name (L is discarded): from here on, recovery completes the swap instead of undoing it. */
export async function renameIntoLeaf(ctx: GcContext, j: LeafJournal): Promise<void> {
  await ctx.repo.backend.replaceImage(j.parent, j.vdi);
  faultPoint('leaf-renamed');
}

/** After the rename: P's record goes and the journal ends (what recovery finishes after a crash). */
export async function finishSwap(ctx: GcContext, j: LeafJournal): Promise<void> {
  await finish(ctx, j);
  ctx.stats.leafCoalesced++;
}

/**
 * Under the SR lock: why L cannot (or can no longer) be swapped with P, if
 * anything. `liveHere`: L may be (and, for a live leaf-coalesce, stays) active on this host.
 * `pausedOn`: L may be active on that host, which holds it paused (paused-leaf-coalesce.ts).
 */
export async function whyNot(ctx: GcContext, j: LeafJournal, copied = false, liveHere = false, pausedOn?: string): Promise<string | undefined> {
  const holder = (await poolActivations(ctx.repo.backend)).get(j.vdi);
  if (holder && !(liveHere && holder.host === hostId()) && holder.host !== pausedOn) return `the VDI ${copied ? 'became' : 'is'} active on host ${holder.host}`;
  const { nodes } = await ctx.repo.tree();
  const leaf = nodes.get(j.vdi);
  const parent = nodes.get(j.parent);
  if (!leaf || !parent) return 'the leaf or its parent is gone';
  const alone = leftAloneFor(nodes);
  if (alone.images.has(j.vdi)) return alone.reasons.join('; ');
  if (leaf.parent !== j.parent || leaf.children.length > 0 || leaf.hidden) return 'the leaf changed place in its tree (a snapshot, clone or delete ran)';
  if (!parent.hidden || parent.children.length !== 1) return 'the parent gained a child or became visible';
  if (copied && parent.virtualSize !== leaf.virtualSize) return 'the leaf was resized during the copy';
  return undefined;
}

export async function abandonedMark(ctx: GcContext, j: LeafJournal): Promise<string | undefined> {
  const text = await ctx.repo.backend.readJournal(journalName(j));
  if (text === undefined) return 'its journal is gone';
  return (JSON.parse(text) as LeafJournal).abandon ? 'the VDI was activated during the copy' : undefined;
}

async function finish(ctx: GcContext, j: LeafJournal): Promise<void> {
  await ctx.repo.records.dropVdis([j.parent]);
  ctx.log.info(`Leaf-coalesce done: ${short(j.vdi)} is now one image shorter`);
  await tellToolstack(ctx, `leaf-coalesce of ${short(j.vdi)}`, async (db) => {
    // The leaf took its parent's place: the parent's record goes, the leaf's names the grandparent (or none).
    await db.forget(j.parent);
    const { parentName } = await ctx.repo.backend.withImagesActive([j.vdi], () => readImageSummary(ctx.repo.imagePath(j.vdi)));
    await db.parentChanged(j.vdi, parentName === undefined ? undefined : uuidOfImageName(parentName));
  });
  await endJournal(ctx.repo.backend, j);
}

export async function recoverLeaf(ctx: GcContext, j: LeafJournal): Promise<string> {
  const { repo } = ctx;
  const next = await underSrLock(ctx, async () => {
    if (!(await repo.backend.hasImage(j.parent))) {
      await setImageHidden(repo.imagePath(j.vdi), false);
      await finish(ctx, j);
      return `leaf-coalesce of ${j.vdi} was complete`;
    }
    // Killed between unhiding P and the swap: hidden again, it is as before the swap.
    await setImageHidden(repo.imagePath(j.parent), true);
    if (j.live) {
      // The leaf was written while copied and the record of what was written died with the run: the next run starts afresh.
      await endJournal(repo.backend, j);
      return `live leaf-coalesce of ${j.vdi} abandoned: interrupted; the next run starts it again`;
    }
    const why = j.abandon ? 'the VDI was activated during the copy' : await whyNot(ctx, j);
    if (why) {
      // The parent, hidden, holds nothing anyone reads alone.
      await endJournal(repo.backend, j);
      return `leaf-coalesce of ${j.vdi} abandoned: ${why}`;
    }
    return undefined;
  });
  if (next) return next;
  if ((await mergeAndSwap(ctx, j)) === 'skipped') return `leaf-coalesce of ${j.vdi} abandoned`;
  return `leaf-coalesce of ${j.vdi} redone`;
}
