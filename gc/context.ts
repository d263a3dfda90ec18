/** What every collector step needs: the SR, its log, the abort signal, the SR lock. */
import type { SMLog } from '../lib/log/index.js';
import { lockOrFail } from '../lib/sr/lock.js';
import type { Repository } from '../lib/sr/repository.js';
import type { ToolstackDb } from '../lib/sr/xapi-sync.js';

export interface GcContext {
  repo: Repository;
  log: SMLog;
  signal: AbortSignal;
  /** xapi's database, when an endpoint listens (toolstack.ts); undefined standalone. */
  toolstack?: ToolstackDb;
  /** Figures for the run's speed record. */
  stats: { deleted: number; coalesced: number; leafCoalesced: number; bytesCopied: number; copyMs: number };
}

const SR_LOCK_TIMEOUT_MS = Number(process.env.SM_LOCK_TIMEOUT_MS ?? 60_000);

/** Runs `fn` holding the SR lock, so no verb changes the SR meanwhile. */
export async function underSrLock<T>(ctx: GcContext, fn: () => Promise<T>): Promise<T> {
  const lock = await lockOrFail(ctx.repo.uuid, 'sr', SR_LOCK_TIMEOUT_MS);
  // Verbs ran while the lock was free: images may have come or gone since the last listing.
  ctx.repo.backend.forgetListing();
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}
