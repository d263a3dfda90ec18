/**
 * The SMAPIv1 verbs, written once for every SR type: each takes the SR lock,
 * validates its input before touching anything, and delegates storage access
 * to the SR type and the backend.
 */
import { getLog } from '../log/index.js';
import { encodeMethodCall, type Driver, type Request, type Verb } from '../smapi/index.js';
import { SMError } from '../errors/sm-error.js';
import { askHolder, isLockHeld, lockOrFail } from './lock.js';
import { activeHere, clearStaleActivations, dropActivation, poolActivations, recordActivation } from './activation.js';
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
} from './attach-record.js';
import { allocateParams, connectKernelNbd, paramsNbd, serveVdi, servedHere, settleServing, stopServing, unpauseLeftovers, withPausedServing } from './datapath.js';
import { cbtVerbs } from './cbt-verbs.js';
import { growLogToImage, trackedLog } from './cbt-logs.js';
import { faultPoint } from './fault.js';
import { hostId } from './host-id.js';
import { abandonLeafCoalesce } from './journal.js';
import { kickGc } from './gc-trigger.js';
import { requireUuid } from './ids.js';
import { newSrRecord, newVdiRecord } from './metadata.js';
import { recoverSrJournals } from './recovery.js';
import { Repository } from './repository.js';
import { scanSr } from './scan.js';
import { roleOf, requireMaster } from './pool-role.js';
import { parseVdiSize } from './sizes.js';
import type { SrType } from './sr-type.js';
import { snapshotVdi, type SnapshotMode } from './snapshot.js';
import { createVdi } from './vdi-create.js';
import { deleteVdi } from './vdi-delete.js';
import { resizeVdi } from './vdi-resize.js';

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
      const records = await onAttachedSr((repo) => scanSr(repo))(req);
      await kickGc(srUuidOf(req));
      return records;
    },

    sr_update: onAttachedSr(async (repo) => {
      const { free, total } = await repo.backend.space();
      getLog().info(`SR ${repo.uuid}: ${total} bytes, ${free} free`);
      return null;
    }),

    async sr_probe(req) {
      return type.probe(req);
    },

    vdi_create: onAttachedSr(async (repo, _sr, req) => {
      const [size, label, description, metadataOfPool, isSnapshot, snapshotTime, snapshotOf, readOnly] = req.args;
      const virtualSize = parseVdiSize(size);
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
      });
      return vdiReply(uuid);
    }),

    vdi_delete: async (req) => {
      await onVdiOrLog(async (repo, vdi, sr) => {
        if (await readVdiState(sr, vdi)) throw new SMError('VDIInUse', `${vdi} is attached`);
        const elsewhere = (await poolActivations(repo.backend)).get(vdi);
        if (elsewhere) throw new SMError('VDIInUse', `${vdi} is active on host ${elsewhere.host}`);
        await deleteVdi(repo, vdi);
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

    vdi_detach: onVdi(async (repo, vdi, sr) => {
      // Detached without a vdi_deactivate first: still served, or its datapath died.
      await settleServing(repo, sr, vdi);
      await stopServing(repo, sr, vdi);
      await dropActivation(repo.backend, vdi);
      await repo.backend.releaseVdi(vdi); // detached without a vdi_deactivate first
      await writeVdiState(sr, vdi, undefined);
      return null;
    }),

    vdi_activate: onVdi(async (repo, vdi, sr, req) => {
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
        await settleServing(repo, sr, vdi);
        await serveVdi(sr, vdi, repo.imagePath(vdi), writable, writable ? await trackedLog(repo, vdi) : undefined);
        await connectKernelNbd(sr, vdi, state.nbd_device);
      } catch (e) {
        if (!state.active) {
          await stopServing(repo, sr, vdi).catch(() => undefined);
          await repo.backend.releaseVdi(vdi);
          await dropActivation(repo.backend, vdi);
        }
        throw e;
      }
      await writeVdiState(sr, vdi, { ...state, writable, active: true });
      return null;
    }),

    vdi_deactivate: onVdi(async (repo, vdi, sr) => {
      // Served no more first: every acknowledged write flushed, the image closed (or a dead datapath cleaned up).
      await settleServing(repo, sr, vdi);
      await stopServing(repo, sr, vdi);
      const state = await readVdiState(sr, vdi);
      // Inactive first: killed before the release, the hold is dropped by the next verb's settleHolds.
      if (state) await writeVdiState(sr, vdi, { ...state, active: false });
      await repo.backend.releaseVdi(vdi);
      await dropActivation(repo.backend, vdi);
      return null;
    }),

    vdi_snapshot: onVdi(async (repo, vdi, sr, req) => {
      const mode: SnapshotMode = req.driver_params?.type === 'single' ? 'single' : 'double';
      await refuseActiveElsewhere(repo, vdi);
      return vdiReply(await withPausedServing(repo, sr, vdi, () => snapshotVdi(repo, vdi, mode), () => recoverSrJournals(repo)).catch(wrap('VDISnapshot')));
    }),

    vdi_clone: onVdi(async (repo, vdi, sr) => {
      await refuseActiveElsewhere(repo, vdi);
      return vdiReply(await withPausedServing(repo, sr, vdi, () => snapshotVdi(repo, vdi, 'clone'), () => recoverSrJournals(repo)).catch(wrap('VDIClone')));
    }),

    vdi_resize: onVdi(async (repo, vdi, sr, req) => {
      await refuseActiveElsewhere(repo, vdi);
      await withPausedServing(repo, sr, vdi, () => resizeVdi(repo, vdi, parseVdiSize(req.args[0]), Number(req.args[0])).then(() => growLogToImage(repo, vdi)), () => recoverSrJournals(repo)).catch(wrap('VDIResize'));
      return vdiReply(vdi);
    }),

    vdi_resize_online: onVdi(async (repo, vdi, sr, req) => {
      await refuseActiveElsewhere(repo, vdi);
      await withPausedServing(repo, sr, vdi, () => resizeVdi(repo, vdi, parseVdiSize(req.args[0]), Number(req.args[0])).then(() => growLogToImage(repo, vdi)), () => recoverSrJournals(repo)).catch(wrap('VDIResize'));
      return vdiReply(vdi);
    }),

    vdi_update: onVdi(async (repo, vdi) => {
      if (!(await repo.records.hasVdi(vdi))) await repo.records.putVdis([newVdiRecord(vdi)]);
      return null;
    }),

    vdi_introduce: onAttachedSr(async (repo, _sr, req) => {
      const vdi = requireUuid(req.vdi_location ?? req.vdi_uuid, 'vdi_location', 'VDIUnavailable');
      if (!(await repo.backend.hasImage(vdi))) throw new SMError('VDIMissing', vdi);
      if (await repo.records.hasVdi(vdi)) throw new SMError('VDIExists', vdi);
      const info = await repo.info(vdi);
      await repo.records.putVdis([newVdiRecord(vdi, { managed: !info.hidden, read_only: info.hidden, type: req.vdi_type ?? 'user' })]);
      return vdiReply(vdi);
    }),

    vdi_generate_config: onVdi(async (_repo, vdi, sr, req) => {
      // The call a host makes later to attach this VDI without the toolstack.
      return encodeMethodCall('vdi_attach_from_config', [
        { command: 'vdi_attach_from_config', device_config: req.device_config, sr_uuid: sr, vdi_uuid: vdi, host_ref: req.host_ref, args: ['true'] },
      ]);
    }),
    // VDI_CONFIG_CBT: only where the backend keeps changed-block logs (File, NFS).
    ...(type.changedBlockTracking ? cbtVerbs({ onVdi, onVdiOrLog, refuseActiveElsewhere, kickGc }) : {}),
  };
  for (const verb of MASTER_ONLY) if (verbs[verb]) verbs[verb] = masterOnly(verb, verbs[verb]!);
  return { info: type.info, verbs };
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
 * Snapshot, clone and resize change the VDI's chain under its datapath, which
 * only this host can pause: a VDI active on another host is refused (VDIInUse).
 */
async function refuseActiveElsewhere(repo: Repository, vdi: string): Promise<void> {
  const holder = (await poolActivations(repo.backend)).get(vdi);
  if (holder && holder.host !== hostId()) throw new SMError('VDIInUse', `${vdi} is active on host ${holder.host}`);
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

