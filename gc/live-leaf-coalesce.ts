/**
 * Live leaf-coalesce: a leaf L active on this host (served by its datapath),
 * the only child of a hidden parent P, merges into P without being
 * deactivated. The copy runs while clients write L: P is hidden and L covers
 * every sector copied, so nobody reads the difference. The datapath records
 * which blocks clients write (track-start, dirty-since), and each round copies
 * again only those, until what is left is small; then, under the SR lock, L's
 * datapath is paused, the rest is copied, P takes L's place as the offline
 * leaf-coalesce does (unhidden, renamed to L), and the datapath is unpaused on it.
 *
 * A VDI written faster than the copy keeps it going round: after a bounded
 * number of rounds the GC gives up (P only gained copies of L's blocks) and
 * says why; the pause is bounded by the size of the final copy.
 *
 * Journaled (`leaf`, `live`): a run killed before the swap is abandoned by
 * recovery (the record of writes died with it), after it only the record of P
 * is left to drop; the datapath left paused is unpaused on L as it is then.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { controlCall } from '../lib/datapath/control.js';
import { servedHere, withServedPaused } from '../lib/sr/datapath.js';
import { faultPoint } from '../lib/sr/fault.js';
import { beginJournal, endJournal, type Journal } from '../lib/sr/journal.js';
import { datapathControlPath } from '../lib/sr/paths.js';
import { coalesceChainInto, PreparedInKernelCopy, scrubUnmarkedSectors, setImageHidden, VhdImage, type CoalesceResult } from '../lib/vhd/index.js';
import { underSrLock, type GcContext } from './context.js';
import { copyIntoParent } from './copy-into-parent.js';
import { WrittenSectors } from './written-sectors.js';
import { abandonedMark, finishSwap, renameIntoLeaf, whyNot } from './leaf-coalesce.js';
import { short } from './gc-log.js';

type LeafJournal = Extract<Journal, { kind: 'leaf' }>;

const MiB = 1024 * 1024;

/** Rounds after the first full copy before giving up (a VDI writing faster than the copy). */
const MAX_ROUNDS = Number(process.env.SM_GC_LIVE_ROUNDS ?? 8);
/** The most the final copy (datapath paused) may have to copy. */
const FINAL_BYTES = Number(process.env.SM_GC_LIVE_FINAL_MIB ?? 4) * MiB;
/** Pauses a run may try: one that finds more than that written just before it unpauses at once, and the rounds go on. */
const MAX_PAUSES = Number(process.env.SM_GC_LIVE_PAUSES ?? 3);

/** Rounds go on until this little is left (a shorter pause), as long as there are rounds left. */
const TARGET_BYTES = FINAL_BYTES / 8;

/** A pause found more written just before it than it may copy: it copied nothing (what was written stays pending). */
class WrittenTooMuch {
  constructor(readonly bytes: number) {}
}

/** Whether the VDI is served by this host's datapath (a live leaf-coalesce needs its write record). */
export async function servedOnThisHost(ctx: GcContext, vdi: string): Promise<boolean> {
  return (await servedHere(ctx.repo.uuid)).some((s) => s.vdi === vdi && s.writable);
}

export async function liveLeafCoalesce(ctx: GcContext, leaf: string, parent: string): Promise<'done' | 'skipped'> {
  const { repo, log } = ctx;
  const j: LeafJournal = { kind: 'leaf', vdi: leaf, parent, live: true };
  const control = datapathControlPath(repo.uuid);
  const tracking = await underSrLock(ctx, async () => {
    const why = (await whyNot(ctx, j, false, true)) ?? ((await servedOnThisHost(ctx, leaf)) ? undefined : 'the VDI is not served writable here');
    if (why) {
      log.info(`Live leaf-coalesce of ${short(leaf)} skipped: ${why}`);
      return undefined;
    }
    await beginJournal(repo.backend, j);
    try {
      return await controlCall(control, { op: 'track-start', vdi: leaf });
    } catch (err) {
      log.warn(`Live leaf-coalesce of ${short(leaf)} skipped: its datapath does not record writes: ${(err as Error).message}`);
      await endJournal(repo.backend, j);
      return undefined;
    }
  });
  if (!tracking) return 'skipped';
  const record: WriteRecord = { control, vdi: leaf, token: tracking.token!, blockSize: tracking.blockSize! };
  return repo.backend.withImagesActive([leaf, parent], async () => {
    const outcome = await copyLive(ctx, j, record).catch(async (err: Error) => `it failed: ${err.message}`);
    // Swapped, then something failed (the unpause: a datapath that died is cleaned up by the next verb on the VDI).
    if (outcome === 'done' || !(await repo.backend.hasImage(parent))) return 'done';
    log.info(`Live leaf-coalesce of ${short(leaf)} given up: ${outcome}`);
    // P only gained copies of L's blocks, which L covers: the chain reads the same. The final step
    // unhides P before its pause and hides it again if it does not swap; a failure there leaves it to hide here.
    await underSrLock(ctx, async () => {
      await setImageHidden(repo.imagePath(parent), true);
      await endJournal(repo.backend, j);
    });
    await controlCall(control, { op: 'track-stop', vdi: leaf }).catch(() => undefined);
    return 'skipped';
  });
}

interface WriteRecord {
  control: string;
  vdi: string;
  token: string;
  blockSize: number;
}

/** Sectors written since the last call (every block named is in the leaf's on-disk BAT); `flush`: the leaf flushed in any case. */
async function writtenSince(r: WriteRecord, flush = false): Promise<[number, number][]> {
  return (await controlCall(r.control, { op: 'dirty-since', vdi: r.vdi, token: r.token, ...(flush ? { flush } : {}) })).written ?? [];
}

/** The rounds, then the final step; 'done', or why it stopped. */
async function copyLive(ctx: GcContext, j: LeafJournal, record: WriteRecord): Promise<'done' | string> {
  const { repo, log } = ctx;
  log.info(`Live leaf-coalescing ${short(j.vdi)} into *${short(j.parent)} (the VDI stays active)`);
  const leafPath = repo.imagePath(j.vdi);
  if ((await openLive(leafPath, (l) => l.blockSize)) !== record.blockSize) return 'the datapath records writes in blocks of another size';
  // P becomes the leaf the datapath reopens without a scan: no data under clear bits (left by a run
  // killed mid-copy). Scrubbed first: the copies of this run set every bit they write under before
  // they end, and the time is not spent between the last round and the pause, when writes pile up.
  const p = await VhdImage.open(repo.imagePath(j.parent), true);
  try {
    await scrubUnmarkedSectors(p);
  } finally {
    await p.close();
  }
  // Round 0: the whole leaf. Sectors written meanwhile are in the record; those in blocks whose
  // BAT entry was not on disk yet stay pending until it is.
  await copyRound(ctx, j, 0, undefined);
  faultPoint('live-leaf-round');
  const pending = new WrittenSectors(record.blockSize);
  let before = Infinity;
  for (let round = 1; ; round++) {
    pending.add(await writtenSince(record));
    const left = pending.bytes;
    // Small enough; or small enough for a pause and no longer shrinking (the writes keep pace with the rounds).
    if (left <= TARGET_BYTES || (left <= FINAL_BYTES && (round > MAX_ROUNDS || left > before * 0.7))) break;
    before = left;
    if (round > MAX_ROUNDS) {
      return `the VDI is written faster than it is copied: after ${MAX_ROUNDS} rounds ${(left / MiB).toFixed(1)} MiB were written again, more than the ${(FINAL_BYTES / MiB).toFixed(1)} MiB a pause may copy`;
    }
    await copyRound(ctx, j, round, pending);
    faultPoint('live-leaf-round');
  }
  for (let pause = 1; ; pause++) {
    const outcome = await finalStep(ctx, j, record, pending);
    if (!(outcome instanceof WrittenTooMuch)) return outcome;
    const why = `${(outcome.bytes / MiB).toFixed(1)} MiB were written just before pause ${pause}, more than the ${(FINAL_BYTES / MiB).toFixed(1)} MiB a pause may copy`;
    if (pause >= MAX_PAUSES) return `${why}; the next run tries again`;
    // Unpaused at once: the next final step's own round copies what was written, then it pauses again.
    log.info(`Live leaf-coalesce of ${short(j.vdi)}: ${why}: unpaused, one more round, then pause ${pause + 1} of at most ${MAX_PAUSES}`);
  }
}

/** One round: the pending sectors in blocks the leaf's on-disk BAT has are copied and leave `pending` (the whole leaf when absent). */
async function copyRound(ctx: GcContext, j: LeafJournal, round: number | string, pending: WrittenSectors | undefined): Promise<void> {
  const what = `Live leaf-coalesce of ${short(j.vdi)}, round ${round}`;
  let sectors: Map<number, Uint8Array> | undefined;
  if (pending) {
    const present = await openLive(ctx.repo.imagePath(j.vdi), (l) => new Set([...pending.blocks.keys()].filter((b) => b < l.blockCount && l.hasBlock(b))));
    sectors = pending.take((b) => present.has(b));
  }
  try {
    const r = await copyWithRetry(ctx, j, what, sectors);
    const rate = r.elapsedMs > 0 ? r.bytesCopied / MiB / (r.elapsedMs / 1000) : 0;
    ctx.log.info(`${what}: ${sectors ? `${sectors.size} blocks written meanwhile` : 'the whole leaf'}, ${(r.bytesCopied / MiB).toFixed(1)} MiB in ${r.elapsedMs} ms (${rate.toFixed(1)} MiB/s)`);
  } catch (err) {
    if (sectors) pending!.putBack(sectors);
    throw err;
  }
}

/**
 * The leaf is being appended to while it is read: its end may move between
 * reading its size and its footer, so an open that finds no footer there is
 * tried again (the copy is idempotent).
 */
async function copyWithRetry(ctx: GcContext, j: LeafJournal, what: string, sectors: Map<number, Uint8Array> | undefined) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await copyIntoParent(ctx, [j.vdi], j.parent, what, sectors);
    } catch (err) {
      if (attempt >= 3 || ctx.signal.aborted) throw err;
      ctx.log.info(`${what}: ${(err as Error).message}; tried again`);
      await sleep(20 * attempt);
    }
  }
}

async function openLive<T>(path: string, fn: (image: VhdImage) => T): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      const image = await VhdImage.open(path);
      try {
        return fn(image);
      } finally {
        await image.close();
      }
    } catch (err) {
      if (attempt >= 3) throw err;
      await sleep(20 * attempt);
    }
  }
}

/**
 * Under the SR lock: what was written since the last round is copied once
 * more with the clients running, then the datapath is paused, the last
 * blocks written are copied, P takes L's name, and the datapath is unpaused
 * on it (withServedPaused logs how long it was paused). P's record and the
 * journal go after the unpause: nothing reads them meanwhile (the SR lock is
 * held), and recovery finishes them after a crash.
 */
async function finalStep(ctx: GcContext, j: LeafJournal, record: WriteRecord, pending: WrittenSectors): Promise<'done' | string | WrittenTooMuch> {
  const { repo } = ctx;
  return underSrLock(ctx, async () => {
    const why = (await abandonedMark(ctx, j)) ?? (await whyNot(ctx, j, true, true));
    if (why) return why;
    // Everything that need not wait for the last round goes before it: what clients write from
    // that round's start to the pause is what the pause copies.
    // P is unhidden now, not in the pause: hidden or not, it reads the same through L, the SR lock keeps
    // every scan away, and a crash or a give-up from here hides it again (recoverLeaf, below).
    // Durable now, so a pause with nothing to copy syncs nothing; the final copy's barrier covers it otherwise.
    await setImageHidden(repo.imagePath(j.parent), false, { sync: true });
    faultPoint('leaf-unhidden');
    let outcome: 'done' | string | WrittenTooMuch = 'failed';
    let prepared: PreparedInKernelCopy | undefined;
    try {
      // The copy program started now, on L's and P's files: a process start on a loaded host can take
      // tens of ms, which the pause would otherwise wait for (the copy checks it holds the same files).
      prepared = await PreparedInKernelCopy.start(repo.imagePath(j.vdi), repo.imagePath(j.parent));
      // The pause then copies only what is written during this copy and its own flush, which the
      // flush asked for here keeps short (the rounds leave the leaf's writes to the page cache).
      pending.add(await writtenSince(record, true));
      await copyRound(ctx, j, 'before the pause', pending);
      const ready = prepared;
      // P, written by the copy, becomes the leaf; what lies below it stays open. The pause's reply says what was written meanwhile.
      // L is read through the page cache and its last writes land in P, whose copy ends with P's fdatasync: the pause
      // syncs L only where its file would lack something (a block allocated since the flush before).
      outcome = await withServedPaused(repo, repo.uuid, [j.vdi], (written) => pausedSwap(ctx, j, record, written.get(j.vdi), pending, ready), {
        reason: 'a live leaf-coalesce',
        changed: [j.parent],
        writtenSince: new Map([[j.vdi, record.token]]),
        durable: false,
      });
    } finally {
      await prepared?.close();
      // Not swapped: P hides again before the SR lock goes, so no scan ever sees it visible with a child.
      if (outcome !== 'done' && (await repo.backend.hasImage(j.parent))) await setImageHidden(repo.imagePath(j.parent), true);
    }
    if (outcome !== 'done') return outcome;
    faultPoint('live-leaf-unpaused');
    await finishSwap(ctx, j);
    return outcome;
  });
}

/** The datapath paused: the rest copied into P (unhidden just before), P renamed to L's name. */
async function pausedSwap(ctx: GcContext, j: LeafJournal, record: WriteRecord, written: [number, number][] | undefined, pending: WrittenSectors, prepared: PreparedInKernelCopy | undefined): Promise<'done' | WrittenTooMuch> {
  const { repo, log } = ctx;
  const started = Date.now();
  faultPoint('live-leaf-paused');
  // Paused: the datapath settled the leaf, so every write acknowledged is in the record or already copied.
  // A datapath started by an older version answers the pause alone: then it is asked.
  pending.add(written ?? (await writtenSince(record)));
  if (pending.bytes > FINAL_BYTES) return new WrittenTooMuch(pending.bytes);
  const blocks = pending.blocks.size;
  // Every block named is in the leaf's BAT in the file now (the pause wrote the entries it lacked); a block it lacks holds nothing to copy.
  const r = blocks > 0 ? await finalCopy(ctx, j, pending.take(() => true), prepared) : { bytesCopied: 0 };
  await prepared?.close(); // before the rename: no handle of ours left on L's file when P replaces it (NFS keeps open replaced files)
  faultPoint('live-leaf-final-copied');
  const copied = Date.now();
  await renameIntoLeaf(ctx, j);
  const ms = (a: number, b: number) => `${b - a} ms`;
  log.info(
    `Live leaf-coalesce of ${short(j.vdi)}: final step (${(r.bytesCopied / MiB).toFixed(1)} MiB in ${blocks} blocks) and swap took ${Date.now() - started} ms paused ` +
      `(copied ${ms(started, copied)}, renamed ${ms(copied, Date.now())})`,
  );
  return 'done';
}

/**
 * The copy while paused, straight into P: the rounds already gave P its size
 * and room (the SR lock keeps them), and the rest of the SR waits.
 */
async function finalCopy(ctx: GcContext, j: LeafJournal, sectors: Map<number, Uint8Array>, prepared: PreparedInKernelCopy | undefined): Promise<CoalesceResult> {
  const r = await coalesceChainInto([ctx.repo.imagePath(j.vdi)], ctx.repo.imagePath(j.parent), { sectors, signal: ctx.signal, prepared });
  ctx.stats.bytesCopied += r.bytesCopied;
  ctx.stats.copyMs += r.elapsedMs;
  const program = r.copiedBy === 'this-process' ? 'through this process' : `copy program ${r.programMs} ms`;
  ctx.log.info(`Live leaf-coalesce of ${short(j.vdi)}, final step: copied ${r.sectors} sectors (${(r.bytesCopied / MiB).toFixed(1)} MiB) in ${r.elapsedMs} ms (${program}, fsync ${r.barrierMs} ms)`);
  return r;
}
