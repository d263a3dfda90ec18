/**
 * Coalescing a hidden node X into its parent P: inflate P, copy X's sectors
 * into P, relink X's children onto P, delete X, deflate P again (it stays a
 * read-only parent). Journaled (`coalesce`, then `relink`): each step is
 * idempotent, so recovery simply runs the rest again.
 */
import { setParent } from '../lib/vhd/index.js';
import { faultPoint } from '../lib/sr/fault.js';
import { beginJournal, endJournal, type Journal } from '../lib/sr/journal.js';
import { parentNameOf } from './names.js';
import { underSrLock, type GcContext } from './context.js';
import { copyIntoParent } from './copy-into-parent.js';

type CoalesceJournal = Extract<Journal, { kind: 'coalesce' }>;
type RelinkJournal = Extract<Journal, { kind: 'relink' }>;

export async function coalesceNode(ctx: GcContext, x: string, p: string): Promise<void> {
  const journal: CoalesceJournal = { kind: 'coalesce', vdi: x, parent: p };
  await beginJournal(ctx.repo.backend, journal);
  ctx.log.info(`Running VHD coalesce on *${x.slice(0, 8)} into ${p.slice(0, 8)}`);
  await copyIntoParent(ctx, x, p, `Coalesce of ${x.slice(0, 8)}`);
  faultPoint('coalesce-copied');
  await underSrLock(ctx, async () => {
    const { nodes } = await ctx.repo.tree();
    const relink: RelinkJournal = { kind: 'relink', vdi: x, parent: p, children: nodes.get(x)?.children ?? [] };
    await beginJournal(ctx.repo.backend, relink);
    await relinkAndRemove(ctx, relink);
    await settleParent(ctx, journal);
  });
  ctx.stats.coalesced++;
}

/** P keeps X's children, so it stays read-only: give back the room the copy did not use (LVM: deflate). */
async function settleParent(ctx: GcContext, j: CoalesceJournal): Promise<void> {
  if (await ctx.repo.backend.hasImage(j.parent)) await ctx.repo.backend.settleReadOnly(j.parent);
  await endJournal(ctx.repo.backend, j);
}

/** Points every child of X at P, then deletes X and its record. */
async function relinkAndRemove(ctx: GcContext, j: RelinkJournal): Promise<void> {
  await ctx.repo.backend.withImagesActive([j.vdi, j.parent, ...j.children], () => relinkHeld(ctx, j));
}

async function relinkHeld(ctx: GcContext, j: RelinkJournal): Promise<void> {
  const { repo, log } = ctx;
  log.info(`Relinking ${j.children.length} children of ${j.vdi.slice(0, 8)} onto ${j.parent.slice(0, 8)}`);
  for (const child of j.children) {
    if (!(await repo.backend.hasImage(child))) continue;
    if ((await parentNameOf(repo, child)) === j.parent) continue; // done before a crash
    await setParent(repo.imagePath(child), repo.imagePath(j.parent));
    log.info(`  relinked ${child.slice(0, 8)}: parent ${j.vdi.slice(0, 8)} -> ${j.parent.slice(0, 8)}`);
    faultPoint('relink-child');
  }
  faultPoint('relink-done');
  await repo.backend.removeImage(j.vdi);
  const meta = await repo.metadata();
  if (meta.vdis[j.vdi]) {
    delete meta.vdis[j.vdi];
    await repo.saveMetadata(meta);
  }
  log.info(`Deleted coalesced image ${j.vdi.slice(0, 8)}`);
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
  if ((await has(j.vdi)) && (await has(j.parent))) {
    await coalesceNode(ctx, j.vdi, j.parent); // the copy is idempotent: run it all again
    return `coalesce of ${j.vdi} redone`;
  }
  await underSrLock(ctx, () => settleParent(ctx, j));
  return `coalesce of ${j.vdi} was complete`;
}
