/**
 * The LVMoISCSI SR: an LVM volume group `VG_XenStorage-<sr>` on one iSCSI LUN
 * (device_config target, targetIQN, SCSIid, port, chapuser/chappassword,
 * incoming_chapuser/incoming_chappassword). Images are LVs, inflated while writable,
 * deflated once read-only (lib/sr/lvm-backend).
 *
 * `target` may list several addresses of the target (comma-separated): each is
 * tried in turn until discovery and login work; that one is used (no multipath).
 * Detach logs out only of sessions no other SR attached on this host uses.
 * Attach activates only the MGT LV; a VDI's LVs are active while it is
 * activated or while the SR's own work reads them (lib/sr/lv-holds).
 */
import { unlink } from 'node:fs/promises';
import { SMError } from '../lib/errors/sm-error.js';
import type { Request } from '../lib/smapi/request.js';
import * as iscsi from '../lib/os/iscsi.js';
import { isNotFound, Lvm, MGT_LV, vgNameForSr } from '../lib/os/lvm.js';
import { runTool } from '../lib/os/run.js';
import { byIdPath, checkScsiId, readScsiId, scsiDiskInfo, scsiIdFromLinks } from '../lib/os/scsi.js';
import { udevRunning, waitFor, waitForPath } from '../lib/os/udev.js';
import { checkHost, checkPort, checkIqn, InvalidArgumentError } from '../lib/os/validate.js';
import { listAttachRecords, readAttachRecord, type BackendSpec, type IscsiTargetRef } from '../lib/sr/attach-record.js';
import { loginFirstPortal, logoutPortal, type PortalLogin } from '../lib/os/iscsi-portals.js';
import { LvmBackend } from '../lib/sr/lvm-backend.js';
import { linkSrMount } from '../lib/sr/mount-link.js';
import { srMountPath } from '../lib/sr/paths.js';
import type { SrType } from '../lib/verbs/sr-type.js';
import { srDriver } from '../lib/verbs/sr-driver.js';
import { getLog } from '../lib/log/index.js';

const VG_PREFIX = 'VG_XenStorage-';
const LUN_WAIT_MS = Number(process.env.SM_ISCSI_LUN_WAIT_MS ?? 20_000);

/** The validated device_config (every value checked before it reaches a tool). */
interface Config {
  /** One per address of `target`, in the order given. */
  portals: iscsi.Portal[];
  iqn?: string;
  scsiId?: string;
  chap?: iscsi.Chap;
}

function configOf(req: Request): Config {
  const dc = req.device_config;
  try {
    if (!dc.target) throw new SMError('ConfigTargetMissing');
    const port = dc.port ? checkPort(dc.port) : iscsi.ISCSI_PORT;
    const addresses = [...new Set(dc.target.split(',').map((a) => a.trim()).filter((a) => a !== ''))];
    if (addresses.length === 0) throw new SMError('ConfigTargetMissing', 'target names no address');
    const portals = addresses.map((a) => ({ address: checkHost(a, 'target'), port }));
    const iqn = dc.targetIQN ? (dc.targetIQN === '*' ? '*' : checkIqn(dc.targetIQN, 'targetIQN')) : undefined;
    const scsiId = dc.SCSIid ? checkScsiId(dc.SCSIid) : undefined;
    let chap: iscsi.Chap | undefined;
    if (dc.chapuser || dc.chappassword) {
      chap = { username: dc.chapuser ?? '', password: dc.chappassword ?? '' };
      if (dc.incoming_chapuser || dc.incoming_chappassword) {
        chap.usernameIn = dc.incoming_chapuser ?? '';
        chap.passwordIn = dc.incoming_chappassword ?? '';
      }
      iscsi.chapSettings(chap); // validates (secrets are never echoed)
    }
    return { portals, ...(iqn ? { iqn } : {}), ...(scsiId ? { scsiId } : {}), ...(chap ? { chap } : {}) };
  } catch (e) {
    if (e instanceof InvalidArgumentError) {
      const name = /SCSIid/.test(e.what) ? 'ConfigSCSIid' : /IQN/i.test(e.what) ? 'ConfigTargetIQNMissing' : 'ConfigTargetMissing';
      throw new SMError(name, e.message);
    }
    throw e;
  }
}

function loginError(e: unknown): never {
  if (e instanceof SMError) throw e;
  throw new SMError('ISCSILogin', (e as Error).message);
}

/** Logs in to the configured target (or all of them for `*`) at the first of its addresses that works. */
async function loginAll(cfg: Config): Promise<PortalLogin> {
  return loginFirstPortal(cfg.portals, cfg.iqn!, cfg.chap).catch(loginError);
}

async function logoutFresh(logged: PortalLogin): Promise<void> {
  await logoutPortal(logged);
}

/** Discovery at the first address that answers (probe without an IQN). */
async function discoverAny(cfg: Config): Promise<iscsi.DiscoveredTarget[]> {
  const failures: string[] = [];
  for (const p of cfg.portals) {
    try {
      return await iscsi.discover(p.address, p.port);
    } catch (e) {
      failures.push(`${p.address}:${p.port}: ${(e as Error).message}`);
    }
  }
  throw new SMError('ISCSILogin', failures.join('; '));
}

/**
 * The sessions of `mine` that no other SR attached on this host depends on:
 * only those may be logged out when this SR detaches.
 */
export function unsharedTargets(mine: readonly IscsiTargetRef[], others: ReadonlyArray<{ backend: BackendSpec }>): IscsiTargetRef[] {
  const key = (t: IscsiTargetRef) => `${t.iqn} ${t.address} ${t.port}`;
  const used = new Set(others.flatMap((r) => (r.backend.kind === 'lvm' ? (r.backend.targets ?? []) : [])).map(key));
  return mine.filter((t) => !used.has(key(t)));
}

interface Lun {
  device: string;
  lun: number;
  scsiId: string;
}

/** The disks the logged-in sessions bring, once the kernel has attached them. */
async function lunsOf(logged: PortalLogin): Promise<Lun[]> {
  const out: Lun[] = [];
  for (const iqn of logged.iqns) {
    const s = await iscsi.findSession(iqn, logged.portal.address, logged.portal.port);
    if (!s) continue;
    // LUN 0 of tgt is its controller (no disk): wait until some disk is attached.
    const luns =
      (await waitFor(async () => {
        const l = await iscsi.sessionLuns(s.sid);
        const disks = l.filter((x) => x.device);
        const pending = l.filter((x) => x.lun > 0 && !x.device);
        return disks.length > 0 && pending.length === 0 ? disks : undefined;
      }, LUN_WAIT_MS)) ?? [];
    for (const l of luns) {
      const scsiId = (await scsiIdFromLinks(l.device!).catch(() => undefined)) ?? (await readScsiId(l.device!).catch(() => undefined));
      if (scsiId) out.push({ device: l.device!, lun: l.lun, scsiId });
    }
  }
  return out;
}

/** The SR's device: the by-id link when udev makes one, else the sd node. ConfigSCSIid when no LUN has the id. */
async function deviceOf(cfg: Config, logged: PortalLogin): Promise<string> {
  const lun = (await lunsOf(logged)).find((l) => l.scsiId === cfg.scsiId);
  if (!lun) throw new SMError('ConfigSCSIid', `no LUN with SCSIid ${cfg.scsiId} on ${logged.iqns.join(', ')}`);
  const link = byIdPath(lun.scsiId);
  if (udevRunning() && (await waitForPath(link, 10_000))) return link;
  return lun.device;
}

const xmlEscape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export function iqnListXml(targets: Array<{ address: string; iqn: string }>): string {
  const items = targets.map(
    (t, i) => `\t<TGT>\n\t\t<Index>${i}</Index>\n\t\t<IPAddress>${xmlEscape(t.address)}</IPAddress>\n\t\t<TargetIQN>${xmlEscape(t.iqn)}</TargetIQN>\n\t</TGT>\n`,
  );
  return `<?xml version="1.0" ?>\n<iscsi-target-iqns>\n${items.join('')}</iscsi-target-iqns>\n`;
}

export function lunListXml(luns: Array<{ vendor: string; serial: string; lun: number; size: number; scsiId: string }>): string {
  const items = luns.map(
    (l) =>
      `\t<LUN>\n\t\t<vendor>${xmlEscape(l.vendor)}</vendor>\n\t\t<serial>${xmlEscape(l.serial)}</serial>\n\t\t<LUNid>${l.lun}</LUNid>\n` +
      `\t\t<size>${l.size}</size>\n\t\t<SCSIid>${xmlEscape(l.scsiId)}</SCSIid>\n\t</LUN>\n`,
  );
  return `<?xml version="1.0" ?>\n<iscsi-target>\n${items.join('')}</iscsi-target>\n`;
}

export function srListXml(srs: Array<{ uuid: string; device: string; size: number }>): string {
  if (srs.length === 0) return '<?xml version="1.0" ?>\n<SRlist/>\n';
  const items = srs.map(
    (s) => `\t<SR>\n\t\t<UUID>${xmlEscape(s.uuid)}</UUID>\n\t\t<Devlist>${xmlEscape(s.device)}</Devlist>\n\t\t<size>${s.size}</size>\n\t</SR>\n`,
  );
  return `<?xml version="1.0" ?>\n<SRlist>\n${items.join('')}</SRlist>\n`;
}

function requireComplete(cfg: Config): void {
  if (!cfg.iqn) throw new SMError('ConfigTargetIQNMissing');
  if (!cfg.scsiId) throw new SMError('ConfigSCSIid');
}

/**
 * Stops udev's LVM rules (pvscan --autoactivation event on every LUN login)
 * from activating the SR's VG behind the driver: an LV activated that way
 * outlives the logout, keeps a table pointing at the vanished disk and then
 * reads EIO after the next login. Only the SR's own code activates its LVs
 * (attach: MGT; the rest per hold, lib/sr/lv-holds). lvm2 >= 2.03.12.
 */
async function noAutoActivation(lvm: Lvm, vg: string): Promise<void> {
  await runTool('vgchange', ['--config', lvm.config, '--setautoactivation', 'n', vg], {
    timeoutMs: 120_000,
    env: { LVM_SUPPRESS_FD_WARNINGS: '1' },
  });
}

/** Logs in, finds the LUN, runs `fn`; logs out of what it logged in to when fn is done (or fails). */
async function withLun<T>(cfg: Config, fn: (device: string, lvm: Lvm) => Promise<T>): Promise<T> {
  requireComplete(cfg);
  const logged = await loginAll(cfg);
  try {
    const device = await deviceOf(cfg, logged);
    return await fn(device, new Lvm({ devices: [device] }));
  } finally {
    await logoutFresh(logged);
  }
}

export const lvmoiscsiSrType: SrType = {
  driver: 'LVMoISCSISR',
  changedBlockTracking: true,
  info: {
    name: 'LVHD over iSCSI',
    description: 'SR plugin which represents disks as VHDs on Logical Volumes within a Volume Group created on an iSCSI LUN',
    vendor: 'xcp-sm',
    copyright: '(C) 2026 xcp-sm contributors',
    driver_version: '1.0',
    required_api_version: '1.0',
    capabilities: [],
    configuration: [
      { key: 'target', description: 'IP address or hostname of the iSCSI target' },
      { key: 'targetIQN', description: 'The IQN of the target LUN group to be attached' },
      { key: 'SCSIid', description: 'The scsi_id of the destination LUN' },
      { key: 'port', description: 'The network port number on which to query the target (default 3260)' },
      { key: 'chapuser', description: 'The username to be used during CHAP authentication' },
      { key: 'chappassword', description: 'The password to be used during CHAP authentication' },
      { key: 'incoming_chapuser', description: 'The incoming username to be used during bi-directional CHAP authentication (optional)' },
      { key: 'incoming_chappassword', description: 'The incoming password to be used during bi-directional CHAP authentication (optional)' },
    ],
  },

  async create(req, sr, init) {
    const cfg = configOf(req);
    const vg = vgNameForSr(sr);
    await withLun(cfg, async (device, lvm) => {
      const pvs = await lvm.pvs().catch(() => []);
      const used = pvs.find((p) => p.vg !== '');
      if (used) throw new SMError('SRExists', `LUN ${cfg.scsiId} holds volume group ${used.vg}`);
      try {
        await lvm.pvcreate([device]);
        await lvm.vgcreate(vg, [device]);
        await noAutoActivation(lvm, vg);
      } catch (e) {
        throw new SMError('LVMCreate', (e as Error).message);
      }
      await init({ kind: 'lvm', vg, devices: [device] });
      if (!(await readAttachRecord(sr))) await lvm.vgchange(vg, false);
    });
  },

  async withStorage(req, sr, fn) {
    const record = await readAttachRecord(sr);
    if (record?.backend.kind === 'lvm') return fn(record.backend);
    const cfg = configOf(req);
    const vg = vgNameForSr(sr);
    return withLun(cfg, async (device, lvm) => {
      if ((await lvm.vgs().catch(() => [])).every((v) => v.name !== vg)) throw new SMError('SRUnavailable', `no volume group ${vg} on LUN ${cfg.scsiId}`);
      await lvm.vgchange(vg, true);
      try {
        return await fn({ kind: 'lvm', vg, devices: [device] });
      } finally {
        // The VG may be gone (sr_delete); deactivation then has nothing to do.
        await lvm.vgchange(vg, false).catch(() => undefined);
      }
    });
  },

  async attach(req, sr): Promise<BackendSpec> {
    const cfg = configOf(req);
    requireComplete(cfg);
    const vg = vgNameForSr(sr);
    const logged = await loginAll(cfg);
    try {
      const device = await deviceOf(cfg, logged);
      const lvm = new Lvm({ devices: [device] });
      if ((await lvm.vgs().catch(() => [])).every((v) => v.name !== vg)) throw new SMError('SRUnavailable', `no volume group ${vg} on LUN ${cfg.scsiId}`);
      // Only what the SR itself needs; VHD LVs are activated by whoever holds them (lib/sr/lv-holds).
      await lvm.setActive(vg, [MGT_LV], true).catch((e: unknown) => {
        if (!isNotFound(e)) throw e; // storage without our metadata: sr_attach adopts it and creates MGT
      });
      await linkSrMount(sr, `/dev/${vg}`); // for operators; the backend uses /dev paths
      getLog().info(`SR ${sr}: ${vg} attached on ${device} via ${logged.portal.address}:${logged.portal.port}`);
      const targets = logged.iqns.map((iqn) => ({ iqn, ...logged.portal }));
      return { kind: 'lvm', vg, devices: [device], targets };
    } catch (e) {
      await logoutFresh(logged);
      throw e;
    }
  },

  async detach(req, sr) {
    const record = await readAttachRecord(sr);
    const vg = vgNameForSr(sr);
    if (record?.backend.kind === 'lvm') {
      await new Lvm({ devices: record.backend.devices }).vgchange(vg, false).catch((e: Error) => {
        throw new SMError('SRInUse', `cannot deactivate ${vg}: ${e.message}`);
      });
    }
    await unlink(srMountPath(sr)).catch(() => undefined);
    const cfg = configOf(req);
    // What attach recorded; without a record (a host that crashed), every session of the configured target.
    const mine =
      record?.backend.kind === 'lvm' && record.backend.targets
        ? record.backend.targets
        : (await iscsi.sessions().catch(() => [])).filter(
            (s) => (cfg.iqn === '*' || s.iqn === cfg.iqn) && cfg.portals.some((p) => p.address === s.address && p.port === s.port),
          );
    const others = (await listAttachRecords()).filter((r) => r.sr_uuid !== sr);
    const free = unsharedTargets(mine, others);
    for (const t of mine) if (!free.includes(t)) getLog().info(`SR ${sr}: staying logged in to ${t.iqn} at ${t.address}:${t.port}: another SR uses it`);
    for (const t of free) await iscsi.logout(t.iqn, t.address, t.port).catch(() => undefined);
  },

  async probe(req) {
    const cfg = configOf(req);
    if (!cfg.iqn) {
      const found = await discoverAny(cfg);
      process.stderr.write(iqnListXml(found.map((t) => ({ address: t.address, iqn: t.iqn }))));
      throw new SMError('ConfigTargetIQNMissing');
    }
    const logged = await loginAll(cfg);
    try {
      const luns = await lunsOf(logged);
      if (!cfg.scsiId) {
        const rows = [];
        for (const l of luns) {
          const info = await scsiDiskInfo(l.device);
          rows.push({ vendor: info.vendor, serial: info.serial, lun: l.lun, size: info.sizeBytes, scsiId: l.scsiId });
        }
        process.stderr.write(lunListXml(rows));
        throw new SMError('ConfigSCSIid');
      }
      const lun = luns.find((l) => l.scsiId === cfg.scsiId);
      if (!lun) throw new SMError('ConfigSCSIid', `no LUN with SCSIid ${cfg.scsiId}`);
      const device = udevRunning() && (await waitForPath(byIdPath(lun.scsiId), 10_000)) ? byIdPath(lun.scsiId) : lun.device;
      const vgs = await new Lvm({ devices: [device] }).vgs().catch(() => []);
      return srListXml(
        vgs.filter((v) => v.name.startsWith(VG_PREFIX)).map((v) => ({ uuid: v.name.slice(VG_PREFIX.length), device, size: v.sizeBytes })),
      );
    } finally {
      await logoutFresh(logged);
    }
  },
};

export const lvmoiscsiSrDriver = srDriver(lvmoiscsiSrType);

// The backend class is part of this driver's surface for tests.
export { LvmBackend };
