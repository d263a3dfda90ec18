/**
 * The SMAPIv1 verbs, written once for every SR type: each takes the SR lock,
 * validates its input before touching anything, and delegates storage access
 * to the SR type and the backend.
 */
import { getLog } from '../log/index.js';
// The modules themselves, not smapi/index.js: that would load the JSON-RPC side into every XML-RPC call.
import type { Driver, Verb } from '../smapi/driver.js';
import type { Request } from '../smapi/request.js';
import { encodeMethodCall } from '../smapi/xmlrpc-codec.js';
import { SMError, type SMErrorName } from '../errors/sm-error.js';
import { askHolder, isLockHeld, lockOrFail } from '../sr/lock.js';
import { activeHere, clearStaleActivations, dropActivation, poolActivations, recordActivation } from '../sr/activation.js';
import {
  attachedBackend,
  backendOf,
  readAttachRecord,
  readVdiState,
  type BackendSpec,
  removeAttachRecord,
  vdiActiveHere,
  sweepHostTemps,
  writeAttachRecord,
  writeVdiState,
} from '../sr/attach-record.js';
import { allocateParams, connectKernelNbd, paramsNbd, serveVdi, servedHere, settleServing, stopServing, unpauseLeftovers, withPausedServing } from '../sr/datapath.js';
import { cbtVerbs } from './cbt-verbs.js';
import { growLogToImage, remoteMergeTarget, trackedLog } from '../sr/cbt-logs.js';
import { faultPoint } from '../sr/fault.js';
import { hostId } from '../sr/host-id.js';
import { abandonLeafCoalesce } from '../sr/journal.js';
import { kickGc } from '../sr/gc-trigger.js';
import { requireUuid } from '../sr/ids.js';
import { newSrRecord } from '../sr/metadata.js';
import { introducedRecord } from '../sr/introduced-record.js';
import { recoverSrJournals } from '../sr/recovery.js';
import { Repository } from '../sr/repository.js';
import { scanSrDetailed } from '../sr/scan.js';
import { connectAheadFor, toolstackDbFor } from './xapi-endpoint.js';
import { noteOnBoot } from '../sr/on-boot.js';
import type { ToolstackDb } from '../sr/xapi-sync.js';
import { tagActive, toolstackSeesServing, untagActive, waitUnpaused, withPaused, type UnpauseWith } from '../sr/xapi-pause.js';
import { XapiError } from '../xapi/errors.js';
import { roleOf, requireMaster } from '../sr/pool-role.js';
import { parseVdiSize } from '../sr/sizes.js';
import type { SrType } from './sr-type.js';
import { snapshotAllowed, snapshotVdi, type SnapshotMode } from '../sr/snapshot.js';
import { createVdi } from '../sr/vdi-create.js';
import { deleteVdi } from '../sr/vdi-delete.js';
import { resizeVdi } from '../sr/vdi-resize.js';
import { introduceVdi } from '../sr/vdi-introduce.js';
import { resetLeaf } from '../sr/reset-leaf.js';
import { withVdiLock } from '../sr/host-pause.js';
import { allSettledOrThrow } from '../util/settle-all.js';

const LOCK_TIMEOUT_MS = Number(process.env.SM_LOCK_TIMEOUT_MS ?? 60_000);
/** How long sr_detach waits for an aborted GC to stop. */
const GC_STOP_TIMEOUT_MS = 30_000;

const srUuidOf = (req: Request) => requireUuid(req.sr_uuid, 'sr_uuid', 'SRUnavailable');

async function withSrLock<T>(sr: string, fn: () => Promise<T>): Promise<T> {
  const lock = await lockOrFail(sr, 'sr', LOCK_TIMEOUT_MS);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

/**
 * The verbs that change the SR's metadata or images: only the SR master runs
 * them, a slave's call faults LVMMaster (58) before touching anything.
 */
const MASTER_ONLY = [
  'sr_create',
  'sr_delete',
  'sr_scan',
  'sr_update',
  'vdi_create',
  'vdi_delete',
  'vdi_snapshot',
  'vdi_clone',
  'vdi_resize',
  'vdi_resize_online',
  'vdi_update',
  'vdi_introduce',
  'vdi_enable_cbt',
  'vdi_disable_cbt',
  'vdi_data_destroy',
  'vdi_list_changed_blocks',
] as const;

function masterOnly(verb: string, fn: Verb): Verb {
  return async (req) => {
    requireMaster(req, verb);
    return fn(req);
  };
}

/** The verbs that always keep a toolstack's database in step when it has an endpoint: they connect to it before taking the lock. */
const CONNECTS_AHEAD = ['vdi_create', 'vdi_delete', 'vdi_snapshot', 'vdi_clone', 'vdi_resize', 'vdi_resize_online'] as const;

function connectingAhead(fn: Verb): Verb {
  return async (req) => {
    void connectAheadFor(req).catch(() => undefined);
    return fn(req);
  };
}

/**
 * Runs `fn` on an attached SR under its lock; on the master, after completing
 * interrupted changes. The whole verb is one hold on the images it touches
 * (LVM: activated as needed, the unheld ones deactivated once at the end).
 */
function onAttachedSr<T>(fn: (repo: Repository, sr: string, req: Request) => Promise<T>): Verb {
  return async (req) => {
    const sr = srUuidOf(req);
    return withSrLock(sr, async () => {
      const repo = new Repository(await attachedBackend(sr));
      // What a crash left is cleared (host temp files, holds of killed processes), finished or undone (changes) before anything else.
      // Journals never on a slave: one may be the master's change in progress.
      await sweepHostTemps(sr);
      await repo.backend.settleHolds(vdiActiveHere(sr));
      return repo.backend.withImagesActive([], async () => {
        if (roleOf(req) === 'master') {
          await repo.records.convertLegacy(); // one look once converted; an SR attached by an older version converts here
          await recoverSrJournals(repo);
        }
        // Paused by a verb that was killed: the chain is settled now, so the datapath reopens its leaf.
        await unpauseLeftovers(repo, sr);
        return fn(repo, sr, req);
      });
    });
  };
}

/** Holds the VDI's host-local lock, which the pool's pause (tapdisk-pause) takes too, around `fn`. */
function underVdiLock<T>(fn: (repo: Repository, vdi: string, sr: string, req: Request) => Promise<T>) {
  return (repo: Repository, vdi: string, sr: string, req: Request) => withVdiLock(vdi, () => fn(repo, vdi, sr, req));
}

/** As onAttachedSr, for a verb on one existing VDI. */
function onVdi<T>(fn: (repo: Repository, vdi: string, sr: string, req: Request) => Promise<T>): Verb {
  return onAttachedSr(async (repo, sr, req) => fn(repo, await repo.requireVdi(req.vdi_uuid), sr, req));
}

/** As onVdi, also for a VDI whose data was destroyed (only its changed-block log is left). */
function onVdiOrLog<T>(fn: (repo: Repository, vdi: string, sr: string, req: Request) => Promise<T>): Verb {
  return onAttachedSr(async (repo, sr, req) => fn(repo, await repo.requireVdiOrLog(req.vdi_uuid), sr, req));
}

const vdiReply = (uuid: string) => ({ uuid, location: uuid });

const backendFor = (sr: string, spec: BackendSpec) => backendOf({ sr_uuid: sr, driver: '', backend: spec, host: '', attached_at: '' });

function boolArg(value: string | undefined): boolean {
  return value === 'true';
}

export function srDriver(type: SrType): Driver {
  const resize = onVdi(async (repo, vdi, sr, req) => {
    const db = await toolstackDbFor(req, sr);
    await refuseActiveElsewhere(repo, vdi, db, req.vdi_ref);
    const before = db ? (await repo.info(vdi).catch(wrap('VDIResize'))).virtualSize : 0;
    await pausedEverywhere(db, vdi, req, async () => {
      await withPausedServing(repo, sr, vdi, () => resizeVdi(repo, vdi, parseVdiSize(req.args[0]), Number(req.args[0])).then(() => growLogToImage(repo, vdi)), () => recoverSrJournals(repo)).catch(wrap('VDIResize'));
      await resizedInToolstackDb(repo, db, vdi, before, req.vdi_ref);
    });
    return vdiReply(vdi);
  });
  // Snapshot and clone: one verb, the mode apart.
  const snapshotVerb = (modeOf: (req: Request) => SnapshotMode) =>
    onVdi(async (repo, vdi, sr, req) => {
      const mode = modeOf(req);
      const db = await toolstackDbFor(req, sr);
      db?.prefetch({ vdi: { uuid: vdi, ref: req.vdi_ref } });
      await refuseActiveElsewhere(repo, vdi, db, req.vdi_ref);
      // Checked before the datapath's pause (a refused snapshot never stalls the VDI, an allowed one stalls it less), while the database pauses it.
      const checked = quietly(snapshotAllowed(repo, vdi, mode));
      return vdiReply(
        await pausedEverywhere(db, vdi, req, async (unpauseWith) => {
          // The SR's allocation is read while the images are made: the pause's own calls, which the images wait for, go first.
          db?.prefetch({ allocation: true });
          const made = await checked
            .then((record) => withPausedServing(repo, sr, vdi, () => snapshotVdi(repo, vdi, mode, record), () => recoverSrJournals(repo)))
            .catch(wrap(mode === 'clone' ? 'VDIClone' : 'VDISnapshot'));
          await db?.snapshotTaken(repo, vdi, made, req.vdi_ref, unpauseWith);
          return made.snap;
        }),
      );
    });
  const verbs: Driver['verbs'] = {
    async sr_create(req) {
      const sr = srUuidOf(req);
      return withSrLock(sr, async () => {
        await type.create(req, sr, async (spec) => {
          faultPoint('sr-create-storage-made');
          const repo = new Repository(backendFor(sr, spec));
          // Metadata that cannot be read is still an SR's: never written over.
          const present = await repo.records.readSr().catch((err: Error) => `unreadable (${err.message})`);
          if (present) throw new SMError('SRExists', `SR metadata already present${typeof present === 'string' ? `, ${present}` : ''}`);
          await repo.records.writeSr(newSrRecord(sr, type.driver, req.sr_sm_config?.name_label ?? ''));
          faultPoint('sr-create-metadata-written');
        });
        getLog().info(`SR ${sr} created`);
        return null;
      });
    },

    async sr_delete(req) {
      const sr = srUuidOf(req);
      await stopGc(sr);
      return withSrLock(sr, async () => {
        // Refuse first (nothing changes on a non-empty SR), then detach, then destroy.
        const leftovers = await type.withStorage(req, sr, async (spec) => {
          const repo = new Repository(backendFor(sr, spec));
          return repo.backend.withImagesActive([], async () => {
            await recoverSrJournals(repo);
            const { nodes } = await repo.tree();
            // An unreadable image may be a VDI: it counts as one.
            const vdis = [...nodes.values()].filter((n) => !n.hidden || n.unreadable !== undefined).length;
            if (vdis > 0) throw new SMError('SRNotEmpty', `${vdis} VDIs remain`);
            const strays = await repo.backend.foreignEntries();
            if (strays.length > 0) throw new SMError('SRNotEmpty', `the SR holds what is not its own: ${strays.slice(0, 5).join(', ')}${strays.length > 5 ? ', ...' : ''}`);
            return [...nodes.keys()];
          });
        });
        const attached = await readAttachRecord(sr);
        if (attached) {
          // Deleting an attached SR detaches it first, as the toolstack's SR.destroy does.
          const busy = [...(await poolActivations(backendOf(attached))).keys()];
          if (busy.length > 0) throw new SMError('SRInUse', `VDIs still active: ${busy.join(', ')}`);
          await type.detach(req, sr);
          await removeAttachRecord(sr);
        }
        await type.withStorage(req, sr, async (spec) => {
          const backend = backendFor(sr, spec);
          // Only hidden base copies are left: garbage of deleted VDIs that the GC has not
          // collected (it never runs on a detached SR). As after the established driver's
          // forced GC, they go with the SR instead of making it undeletable.
          for (const uuid of leftovers) await backend.removeImage(uuid);
          faultPoint('sr-delete-images-removed');
          await backend.destroy();
        });
        await removeAttachRecord(sr);
        getLog().info(`SR ${sr} deleted`);
        return null;
      });
    },

    async sr_attach(req) {
      const sr = srUuidOf(req);
      return withSrLock(sr, async () => {
        const spec = await type.attach(req, sr);
        const repo = new Repository(backendFor(sr, spec));
        const role = roleOf(req);
        // Refused before anything is recorded: the storage is let go again.
        const meta = await checkSrMetadata(repo, sr).catch(async (err: unknown) => {
          await type.detach(req, sr).catch(() => undefined);
          throw err;
        });
        if (role === 'master' && !meta) {
          // Storage without our metadata (e.g. made by another SM): adopt it; scan introduces its images.
          await repo.records.writeSr(newSrRecord(sr, type.driver));
        }
        // An SR still in the single-document layout is converted by the master (records.ts), before anything else changes it.
        if (role === 'master') await repo.records.convertLegacy();
        await writeAttachRecord(sr, type.driver, spec, role);
        await sweepHostTemps(sr);
        await clearStaleActivations(repo.backend);
        if (role === 'master') await repo.backend.withImagesActive([], () => recoverSrJournals(repo));
        // Only activated VDIs keep images active (LVM): whatever else is active was left by a crash or an older version.
        await repo.backend.settleHolds(vdiActiveHere(sr), true);
        const db = await toolstackDbFor(req, sr);
        if (db) await attachedInToolstackDb(repo, db, role === 'master');
        return null;
      });
    },

    async sr_detach(req) {
      const sr = srUuidOf(req);
      await stopGc(sr);
      return withSrLock(sr, async () => {
        // This host's VDIs only: the other hosts of the pool keep theirs, and the SR, attached.
        const record = await readAttachRecord(sr);
        const busy = record ? await activeHere(backendOf(record)) : [];
        if (busy.length > 0) throw new SMError('SRInUse', `VDIs still active: ${busy.join(', ')}`);
        // Nothing is active here, so whatever the datapath still serves was left by an interrupted verb.
        if (record) {
          const repo = new Repository(backendOf(record));
          for (const s of await servedHere(sr)) await stopServing(repo, sr, s.vdi);
        }
        await type.detach(req, sr);
        await removeAttachRecord(sr);
        return null;
      });
    },

    sr_scan: async (req) => {
      const records = await onAttachedSr(async (repo, sr) => {
        const scan = await scanSrDetailed(repo);
        await (await toolstackDbFor(req, sr))?.syncScan(repo, scan);
        return scan.vdis;
      })(req);
      await kickGc(srUuidOf(req));
      return records;
    },

    sr_update: onAttachedSr(async (repo, sr, req) => {
      const { free, total } = await repo.backend.space();
      getLog().info(`SR ${repo.uuid}: ${total} bytes, ${free} free`);
      await (await toolstackDbFor(req, sr))?.updateSr(repo, { delta: 0 });
      return null;
    }),

    async sr_probe(req) {
      return type.probe(req);
    },

    vdi_create: onAttachedSr(async (repo, sr, req) => {
      const [size, label, description, metadataOfPool, isSnapshot, snapshotTime, snapshotOf, readOnly] = req.args;
      const virtualSize = parseVdiSize(size);
      const chosen = req.vdi_uuid === undefined ? undefined : requireUuid(req.vdi_uuid, 'vdi_uuid', 'BadRequest');
      const db = await toolstackDbFor(req, sr);
      db?.prefetch({ allocation: true });
      const uuid = await createVdi(repo, virtualSize, {
        name_label: label ?? '',
        name_description: description ?? '',
        metadata_of_pool: metadataOfPool ?? '',
        is_a_snapshot: boolArg(isSnapshot),
        snapshot_time: snapshotTime ?? '',
        snapshot_of: snapshotOf ?? '',
        read_only: boolArg(readOnly),
        type: req.vdi_type ?? 'user',
        sm_config: { ...(req.vdi_sm_config ?? {}) },
      }, chosen);
      if (db) await createdInToolstackDb(repo, db, uuid);
      return vdiReply(uuid);
    }),

    vdi_delete: async (req) => {
      await onVdiOrLog(async (repo, vdi, sr, req) => {
        if (await readVdiState(sr, vdi)) throw new SMError('VDIInUse', `${vdi} is attached`);
        const db = await toolstackDbFor(req, sr);
        const elsewhere = (await poolActivations(repo.backend, db)).get(vdi);
        if (elsewhere) throw new SMError('VDIInUse', `${vdi} is active on host ${elsewhere.host}`);
        const size = db ? await repo.info(vdi).then((i) => i.virtualSize, () => 0) : 0;
        await deleteMergingRemotely(repo, vdi, db);
        if (db) {
          await db.forget(vdi, req.vdi_ref);
          await db.updateSr(repo, { delta: -size });
        }
      })(req);
      await kickGc(srUuidOf(req));
      return null;
    },

    vdi_attach: onVdi(async (repo, vdi, sr, req) => {
      const writable = boolArg(req.args[0]);
      const record = await repo.vdiRecord(vdi);
      if (writable && (record?.read_only || !record?.managed)) {
        throw new SMError('VDIUnavailable', `${vdi} is read-only`);
      }
      await noteOnBoot(repo, vdi, req.vdi_on_boot, roleOf(req) === 'master');
      // The VDI is read and written through its datapath (DESIGN item 8), never through its image file.
      const { params, nbdDevice } = await allocateParams(sr, vdi);
      await writeVdiState(sr, vdi, { writable, active: false, since: new Date().toISOString(), ...(nbdDevice ? { nbd_device: nbdDevice } : {}) });
      return {
        params,
        params_nbd: paramsNbd(sr, vdi),
        o_direct: true,
        o_direct_reason: '',
        xenstore_data: { 'vdi-uuid': vdi, 'storage-type': type.driver.replace(/SR$/, '').toLowerCase() },
      };
    }),

    vdi_detach: onVdi(underVdiLock(async (repo, vdi, sr) => {
      // Detached without a vdi_deactivate first: still served, or its datapath died.
      await settleServing(repo, sr, vdi);
      await stopServing(repo, sr, vdi);
      await dropActivation(repo.backend, vdi);
      await repo.backend.releaseVdi(vdi); // detached without a vdi_deactivate first
      await writeVdiState(sr, vdi, undefined);
      return null;
    })),

    vdi_activate: onVdi(underVdiLock(async (repo, vdi, sr, req) => {
      const state = await readVdiState(sr, vdi);
      if (!state) throw new SMError('VDIUnavailable', `${vdi} must be attached before it is activated`);
      const writable = boolArg(req.args[0]) || state.writable;
      // A leaf-coalesce copying this VDI outside the SR lock must not swap it from now on (journals: the master's).
      if (roleOf(req) === 'master' && (await abandonLeafCoalesce(repo.backend, vdi))) getLog().info(`VDI ${vdi}: its leaf-coalesce is abandoned, the VDI is being activated`);
      // The pool-wide record first: a crash in between leaves a record too many (cleared on the next sr_attach), never one too few.
      await recordActivation(repo.backend, vdi, writable);
      try {
        // The leaf and every ancestor (LVM: LVs activated; shared ones counted once per VDI holding them).
        // Killed before the state below is written, the hold is dropped by the next verb's settleHolds.
        await repo.backend.holdVdi(vdi, await repo.chainOf(vdi));
      } catch (e) {
        if (!state.active) await dropActivation(repo.backend, vdi);
        throw e;
      }
      try {
        // As tapdisk starts at activate: a datapath that died since the last verb is cleaned up first.
        const servedBefore = await settleServing(repo, sr, vdi);
        await serveVdi(sr, vdi, repo.imagePath(vdi), writable, writable ? await trackedLog(repo, vdi) : undefined);
        await connectKernelNbd(sr, vdi, state.nbd_device, state.active, servedBefore);
      } catch (e) {
        if (!state.active) {
          // connectKernelNbd undoes its own failure; a device it refused is someone else's: left alone.
          await stopServing(repo, sr, vdi, false).catch(() => undefined);
          await repo.backend.releaseVdi(vdi);
          await dropActivation(repo.backend, vdi);
        }
        throw e;
      }
      await writeVdiState(sr, vdi, { ...state, writable, active: true });
      return null;
    })),

    vdi_deactivate: onVdi(underVdiLock(async (repo, vdi, sr) => {
      // Served no more first: every acknowledged write flushed, the image closed (or a dead datapath cleaned up).
      await settleServing(repo, sr, vdi);
      await stopServing(repo, sr, vdi);
      const state = await readVdiState(sr, vdi);
      // Inactive first: killed before the release, the hold is dropped by the next verb's settleHolds.
      if (state) await writeVdiState(sr, vdi, { ...state, active: false });
      await repo.backend.releaseVdi(vdi);
      await dropActivation(repo.backend, vdi);
      return null;
    })),

    vdi_snapshot: snapshotVerb((req) => (req.driver_params?.type === 'single' ? 'single' : 'double')),
    vdi_clone: snapshotVerb(() => 'clone'),

    // One resize: an active VDI's datapath is paused around it, so the online form is the same verb.
    vdi_resize: resize,
    vdi_resize_online: resize,

    vdi_update: onVdi(async (repo, vdi, sr, req) => {
      // Recorded as sr_scan records it: a writable VDI is never a parent (vdi-delete.ts).
      if (!(await repo.records.hasVdi(vdi))) await repo.records.putVdis([await introducedRecord(repo, vdi)]);
      const db = await toolstackDbFor(req, sr);
      const ref = await db?.refOf(vdi, req.vdi_ref);
      if (db && ref) await db.update(ref, await db.viewOf(repo, vdi));
      return null;
    }),

    vdi_introduce: onAttachedSr(async (repo, sr, req) => {
      const image = requireUuid(req.vdi_location ?? req.new_uuid ?? req.vdi_uuid, 'vdi_location', 'VDIUnavailable');
      const uuid = req.new_uuid === undefined ? image : requireUuid(req.new_uuid, 'new_uuid', 'VDIUnavailable');
      await introduceVdi(repo, image, uuid, req.vdi_type ?? 'user');
      // xapi looks the VDI up by uuid after the reply: the driver introduces it (the established `_db_introduce`).
      const db = await toolstackDbFor(req, sr);
      if (db && !(await db.refOf(uuid))) await db.introduce(await db.viewOf(repo, uuid));
      return vdiReply(uuid);
    }),

    vdi_generate_config: onVdi(async (_repo, vdi, sr, req) => {
      // The call a host makes later to attach this VDI without the toolstack.
      return encodeMethodCall('vdi_attach_from_config', [
        { command: 'vdi_attach_from_config', device_config: req.device_config, sr_uuid: sr, vdi_uuid: vdi, host_ref: req.host_ref, args: ['true'] },
      ]);
    }),

    // Every SR type here stores VHD images: the established answer is the SR's VDI type.
    sr_content_type: async () => 'vhd',

    // Sent before each VM start. "reset": the leaf is emptied under a paused datapath (reset-leaf.ts).
    vdi_epoch_begin: onVdi(async (repo, vdi, sr, req) => {
      await noteOnBoot(repo, vdi, req.vdi_on_boot, roleOf(req) === 'master');
      if (req.vdi_on_boot !== 'reset') return null;
      await refuseActiveElsewhere(repo, vdi);
      await withPausedServing(repo, sr, vdi, () => resetLeaf(repo, vdi));
      return null;
    }),

    // Nothing to undo at VM shutdown, as with the established drivers.
    vdi_epoch_end: onVdi(async () => null),

    // The host attaches the VDI from its generated config alone, with no toolstack
    // (HA statefile, redo log at boot): the SR first if it is not attached here, then
    // the VDI attached and activated read-write, as the toolstack's two calls would.
    async vdi_attach_from_config(req) {
      const sr = srUuidOf(req);
      if (!(await readAttachRecord(sr))) await verbs.sr_attach!({ ...req, command: 'sr_attach', args: [] });
      const attached = await verbs.vdi_attach!({ ...req, command: 'vdi_attach', args: ['true'] });
      await verbs.vdi_activate!({ ...req, command: 'vdi_activate', args: ['true'] });
      return attached;
    },

    // The same config with this command: the VDI released (the SR stays attached for the toolstack).
    async vdi_detach_from_config(req) {
      await verbs.vdi_deactivate!({ ...req, command: 'vdi_deactivate', args: [] });
      await verbs.vdi_detach!({ ...req, command: 'vdi_detach', args: [] });
      return null;
    },

    // VDI_CONFIG_CBT: where the backend keeps changed-block logs (File, NFS: files; LVMoISCSI: LVs).
    ...(type.changedBlockTracking ? cbtVerbs({ onVdi, onVdiOrLog, refuseActiveElsewhere, pausedEverywhere, kickGc }) : {}),
  };
  for (const verb of CONNECTS_AHEAD) if (verbs[verb]) verbs[verb] = connectingAhead(verbs[verb]!);
  for (const verb of MASTER_ONLY) if (verbs[verb]) verbs[verb] = masterOnly(verb, verbs[verb]!);
  verbs.vdi_activate = withActivationTags(verbs.vdi_activate!, 'activate');
  verbs.vdi_deactivate = withActivationTags(verbs.vdi_deactivate!, 'deactivate');
  for (const verb of Object.keys(verbs) as (keyof typeof verbs)[]) verbs[verb] = xapiErrorsAsSmErrors(verb, verbs[verb]!);
  return { info: type.info, verbs };
}

/** The SM error each verb turns a XenAPI failure into, as the established SM's `EXCEPTION_TYPE`; any other verb: SMGeneral. */
const XAPI_FAILURE_AS: Partial<Record<string, SMErrorName>> = {
  sr_scan: 'SRScan',
  vdi_create: 'VDICreate',
  vdi_delete: 'VDIDelete',
  vdi_attach: 'VDIUnavailable',
  vdi_detach: 'VDIUnavailable',
  vdi_activate: 'VDIUnavailable',
  vdi_deactivate: 'VDIUnavailable',
  vdi_resize: 'VDIResize',
  vdi_resize_online: 'VDIResize',
  vdi_snapshot: 'VDISnapshot',
  vdi_clone: 'VDIClone',
};

function xapiErrorsAsSmErrors(verb: string, fn: Verb): Verb {
  return async (req) => {
    try {
      return await fn(req);
    } catch (err) {
      if (!(err instanceof XapiError)) throw err;
      throw new SMError(XAPI_FAILURE_AS[verb] ?? 'SMGeneral', `XenAPI ${err.message}`, { cause: err });
    }
  };
}

/**
 * The toolstack's `host_<ref>` tag of an active VDI (reference §5), around
 * the verb and outside the SR lock: an activation that waits for a paused or
 * relinking VDI must not keep the SR locked meanwhile. Tagged before the
 * activate, as the established SM, and untagged again if the activate fails;
 * a deactivate waits while the VDI is paused, and untags after.
 */
function withActivationTags(fn: Verb, which: 'activate' | 'deactivate'): Verb {
  return async (req) => {
    const sr = srUuidOf(req);
    const db = await toolstackDbFor(req, sr);
    if (!db) return fn(req);
    const vdi = requireUuid(req.vdi_uuid, 'vdi_uuid', 'VDIUnavailable');
    if (which === 'deactivate') {
      await waitUnpaused(db, vdi, req.vdi_ref);
      const result = await fn(req);
      await untagActive(db, vdi, req.vdi_ref);
      return result;
    }
    const state = await readVdiState(sr, vdi);
    await tagActive(db, vdi, req.vdi_ref, boolArg(req.args[0]) || state?.writable === true);
    try {
      return await fn(req);
    } catch (err) {
      if (!state?.active) await untagActive(db, vdi, req.vdi_ref).catch(() => undefined);
      throw err;
    }
  };
}

/** Runs a change to a VDI's chain paused in the toolstack's database and on the other hosts serving it (xapi-pause.ts `withPaused`). */
function pausedEverywhere<T>(db: ToolstackDb | undefined, vdi: string, req: Request, fn: (unpauseWith: UnpauseWith) => Promise<T>): Promise<T> {
  return db ? withPaused(db, vdi, req.vdi_ref, fn) : fn(undefined);
}

/**
 * vdi_create: xapi must hear of the new VDI (it looks it up by uuid after the
 * reply). If it cannot, the verb fails, and nothing of the VDI is left on
 * either side: the record it may have introduced is forgotten, the image removed.
 * The SR's sizes do not depend on the new record: they go out with its
 * introduction, one round trip instead of two. Should either fail, the SR's
 * sizes may count the removed VDI, as they could before when the last of
 * their setters failed; the next sr_scan sets them from the SR.
 */
async function createdInToolstackDb(repo: Repository, db: ToolstackDb, uuid: string): Promise<void> {
  let ref: string | undefined;
  try {
    const view = await db.viewOfWritten(repo, uuid);
    // Both have ended (none is left in flight when the VDI is removed) before the first failure is thrown.
    await allSettledOrThrow([db.introduce(view).then((r) => (ref = r)), db.updateSr(repo, { delta: view.virtualSize })]);
  } catch (err) {
    getLog().warn(`VDI ${uuid}: the toolstack database could not be told (${(err as Error).message}): the new VDI is removed`);
    // Without a ref the introduce may still have happened (no answer in time): the record is looked up by uuid.
    await db.forget(uuid, ref).catch(() => undefined);
    await deleteVdi(repo, uuid);
    throw err;
  }
}

/** vdi_resize: the VDI's sizes (the established `_db_update`) and the SR's allocation. */
async function resizedInToolstackDb(repo: Repository, db: ToolstackDb | undefined, vdi: string, before: number, vdiRef?: string): Promise<void> {
  if (!db) return;
  const view = await db.viewOf(repo, vdi);
  const ref = await db.refOf(vdi, vdiRef);
  if (ref) await db.update(ref, view);
  await db.updateSr(repo, { delta: view.virtualSize - before });
}

/**
 * sr_attach: stale tags cleared and, on the master, the SR marked dirty and
 * scanned into the database, as the established `after_master_attach`. A scan
 * that fails leaves the SR attached and tells the operator through a message.
 */
async function attachedInToolstackDb(repo: Repository, db: ToolstackDb, master: boolean): Promise<void> {
  await db.resetOnAttach(master);
  if (!master) return;
  try {
    await repo.backend.withImagesActive([], async () => db.syncScan(repo, await scanSrDetailed(repo)));
  } catch (err) {
    getLog().warn(`SR ${repo.uuid}: the scan after attach failed: ${(err as Error).message}`);
    await db.xapi.messageCreate('POST_ATTACH_SCAN_FAILED', 2, 'SR', repo.uuid, `Failed to scan SR ${repo.uuid} after attaching, error ${(err as Error).message}`).catch(() => undefined);
  }
}

/**
 * The SR's metadata at attach: absent (storage another SM made: adopted), or
 * ours and naming this SR. An SR record (or a single-layout document) that
 * cannot be parsed, or that a newer version wrote, is refused and left as it is (`sm rebuild-metadata` makes a
 * new document from the images, keeping the old one); so is another SR's.
 */
async function checkSrMetadata(repo: Repository, sr: string) {
  const meta = await repo.records.readSr().catch((err: Error) => {
    throw new SMError('MetadataError', `SR metadata of ${sr} cannot be used: ${err.message}; left as it is (see \`sm rebuild-metadata\`)`);
  });
  if (meta && meta.uuid !== sr) throw new SMError('SRUnavailable', `this storage holds SR ${meta.uuid}, not ${sr}`);
  return meta;
}

/**
 * Snapshot, clone, resize and the CBT switches change the VDI's chain (or its
 * log) under its datapath. This
 * host pauses its own; another host's is paused through the toolstack (the
 * tapdisk-pause plugin, xapi-pause.ts), which reaches the hosts its
 * `host_<ref>` keys name (and on LVM maps the changed LVs there afresh:
 * host-pause.ts). So a VDI active on another host is refused (VDIInUse)
 * standalone and with a toolstack that does not record that host as serving
 * the VDI.
 */
async function refuseActiveElsewhere(repo: Repository, vdi: string, db?: ToolstackDb, vdiRef?: string): Promise<void> {
  // The SR's own records only: a host the toolstack alone records (LVM) is one whose `host_<ref>` key the pause follows anyway.
  const holder = (await poolActivations(repo.backend)).get(vdi);
  if (!holder || holder.host === hostId()) return;
  const why = await whyNotPausableThere(vdi, holder.host, db, vdiRef);
  if (why) throw new SMError('VDIInUse', `${vdi} is active on host ${holder.host}${why}`);
  getLog().info(`VDI ${vdi} is active on host ${holder.host}: paused there through the toolstack`);
}

/** Why the datapath serving `vdi` on `host` cannot be paused from here around a change (see above), if it cannot. */
async function whyNotPausableThere(vdi: string, host: string, db?: ToolstackDb, vdiRef?: string): Promise<string | undefined> {
  if (!db) return ' (no toolstack to pause it there)';
  return (await toolstackSeesServing(db, vdi, vdiRef, host)) ? undefined : ', which the toolstack does not record as serving it';
}

/**
 * Deleting a tracked snapshot merges its changed-block log into the next
 * one's. When that one is a VDI active on another host, its datapath holds
 * the log open: it is paused there through the toolstack for the merge (its
 * log settled on disk, and read again as merged when it unpauses), as for a
 * snapshot. Where it cannot be, the delete refuses (VDIInUse, deleteVdi).
 */
async function deleteMergingRemotely(repo: Repository, vdi: string, db?: ToolstackDb): Promise<void> {
  const target = await remoteMergeTarget(repo, vdi, db);
  if (!target) {
    await deleteVdi(repo, vdi, { mergeChecked: true });
    return;
  }
  if (!db || (await whyNotPausableThere(target.child, target.host, db))) {
    await deleteVdi(repo, vdi); // refuses, saying where the log is held
    return;
  }
  getLog().info(`VDI ${vdi}: its changed-block log merges into ${target.child}'s, active on host ${target.host}: ${target.child} paused there through the toolstack`);
  await withPaused(db, target.child, undefined, () => deleteVdi(repo, vdi, { mergeChecked: true }));
}

/** A check started ahead of the step that awaits it: its failure is that step's, never an unhandled rejection meanwhile. */
function quietly<T>(check: Promise<T>): Promise<T> {
  check.catch(() => undefined);
  return check;
}

/** Keeps SM errors as they are; anything else becomes the verb's own error code. */
function wrap(name: 'VDISnapshot' | 'VDIClone' | 'VDIResize') {
  return (err: unknown): never => {
    if (err instanceof SMError) throw err;
    throw new SMError(name, (err as Error).message);
  };
}

/** Asks a running GC to abort and waits (bounded) until it has stopped. */
async function stopGc(sr: string): Promise<void> {
  if ((await askHolder(sr, 'gc_active', 'abort')) === undefined) return;
  const deadline = Date.now() + GC_STOP_TIMEOUT_MS;
  while (await isLockHeld(sr, 'gc_active')) {
    if (Date.now() > deadline) throw new SMError('SRInUse', 'the GC did not stop in time');
    await new Promise((r) => setTimeout(r, 50));
  }
  getLog().info(`GC of SR ${sr} aborted for detach`);
}

