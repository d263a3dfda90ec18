/**
 * The changed-block-tracking verbs (VDI_CONFIG_CBT): vdi_enable_cbt,
 * vdi_disable_cbt, vdi_data_destroy and vdi_list_changed_blocks. The logs
 * themselves are cbt-logs.ts's; here each verb checks its VDI, and changes a
 * served VDI's log with its datapath paused, so the datapath reopens it with
 * the log as it is afterwards (as the established SM pauses tapdisk). These
 * verbs run on the SR master; a VDI served by another host is paused there
 * through the toolstack (the tapdisk-pause plugin), as for a snapshot.
 *
 * Without a XenAPI session the records kept here are the SR's own:
 * `cbt_enabled` in the VDI's record, `type` `cbt_metadata` after a data destroy.
 */
import { toXapiBase64, countSet } from '../cbt/index.js';
import { getLog } from '../log/index.js';
import { SMError } from '../errors/sm-error.js';
import type { Request, Verb } from '../smapi/index.js';
import type { ToolstackDb } from '../sr/xapi-sync.js';
import { poolActivations } from '../sr/activation.js';
import { readVdiState } from '../sr/attach-record.js';
import { changedBlocks, hasCbtLog, startTracking, stopTracking } from '../sr/cbt-logs.js';
import { withPausedServing } from '../sr/datapath.js';
import { toolstackDbFor } from './xapi-endpoint.js';
import { faultPoint } from '../sr/fault.js';
import { requireUuid } from '../sr/ids.js';
import type { Repository } from '../sr/repository.js';
import { deleteVdi } from '../sr/vdi-delete.js';

type OnVdi = <T>(fn: (repo: Repository, vdi: string, sr: string, req: Request) => Promise<T>) => Verb;

export interface CbtVerbContext {
  onVdi: OnVdi;
  onVdiOrLog: OnVdi;
  refuseActiveElsewhere(repo: Repository, vdi: string, db?: ToolstackDb, vdiRef?: string): Promise<void>;
  pausedEverywhere<T>(db: ToolstackDb | undefined, vdi: string, req: Request, fn: () => Promise<T>): Promise<T>;
  kickGc(sr: string): Promise<unknown>;
}

async function setCbtEnabled(repo: Repository, vdi: string, enabled: boolean): Promise<void> {
  const record = await repo.vdiRecord(vdi);
  if (record && record.cbt_enabled !== enabled) await repo.records.putVdis([{ ...record, cbt_enabled: enabled }]);
}

export function cbtVerbs(c: CbtVerbContext): Record<'vdi_enable_cbt' | 'vdi_disable_cbt' | 'vdi_data_destroy' | 'vdi_list_changed_blocks', Verb> {
  return {
    vdi_enable_cbt: c.onVdi(async (repo, vdi, sr, req) => {
      const record = await repo.vdiRecord(vdi);
      if (record?.is_a_snapshot) throw new SMError('VDIUnavailable', `${vdi} is a snapshot: changed-block tracking is enabled on the VDI it was taken of`);
      if (record && (record.read_only || !record.managed)) throw new SMError('VDIUnavailable', `${vdi} is read-only: nothing would be tracked`);
      const db = await toolstackDbFor(req, sr);
      await c.refuseActiveElsewhere(repo, vdi, db, req.vdi_ref);
      const { virtualSize } = await repo.info(vdi);
      const made = await c.pausedEverywhere(db, vdi, req, () => withPausedServing(repo, sr, vdi, () => startTracking(repo, vdi, virtualSize)));
      faultPoint('cbt-enable-log-created');
      await setCbtEnabled(repo, vdi, true);
      getLog().info(`VDI ${vdi}: changed-block tracking ${made ? 'enabled' : 'was already enabled'}`);
      return null;
    }),

    vdi_disable_cbt: c.onVdi(async (repo, vdi, sr, req) => {
      const db = await toolstackDbFor(req, sr);
      await c.refuseActiveElsewhere(repo, vdi, db, req.vdi_ref);
      const removed = await c.pausedEverywhere(db, vdi, req, () => withPausedServing(repo, sr, vdi, () => stopTracking(repo, vdi)));
      faultPoint('cbt-disable-log-removed');
      await setCbtEnabled(repo, vdi, false);
      getLog().info(`VDI ${vdi}: changed-block tracking ${removed ? 'disabled' : 'was not enabled'}`);
      return null;
    }),

    vdi_data_destroy: async (req) => {
      await c.onVdiOrLog(async (repo, vdi, sr, req) => {
        const record = await repo.vdiRecord(vdi);
        if (!record?.is_a_snapshot) throw new SMError('VDIUnavailable', `${vdi} is not a snapshot: only a snapshot's data can be destroyed`);
        if (!(await hasCbtLog(repo, vdi))) throw new SMError('VDIUnavailable', `${vdi} has no changed-block log: destroying its data would leave nothing`);
        if (await readVdiState(sr, vdi)) throw new SMError('VDIInUse', `${vdi} is attached`);
        const elsewhere = (await poolActivations(repo.backend, await toolstackDbFor(req, sr))).get(vdi);
        if (elsewhere) throw new SMError('VDIInUse', `${vdi} is active on host ${elsewhere.host}`);
        await deleteVdi(repo, vdi, { dataOnly: true });
      })(req);
      await c.kickGc(requireUuid(req.sr_uuid, 'sr_uuid', 'SRUnavailable'));
      return null;
    },

    vdi_list_changed_blocks: c.onVdiOrLog(async (repo, from, sr, req) => {
      const to = await repo.requireVdiOrLog(await targetUuid(req, sr));
      const { bitmap, size, logs } = await changedBlocks(repo, from, to);
      getLog().info(`VDI ${from} -> ${to}: ${countSet(bitmap)} of ${Math.ceil(size / 65536)} blocks changed (${logs.length} logs)`);
      return toXapiBase64(bitmap);
    }),
  };
}

/**
 * The target of vdi_list_changed_blocks: xapi passes its reference, which the
 * established SM resolves over XenAPI, and so does this with an endpoint;
 * without one the target is named by its uuid (its location).
 */
async function targetUuid(req: Request, sr: string): Promise<string | undefined> {
  const target = req.args[0];
  if (!target?.startsWith('OpaqueRef:')) return target;
  const db = await toolstackDbFor(req, sr);
  return db ? (await db.xapi.vdiRecord(target)).uuid : target;
}
