/**
 * The LVMoISCSI SR: an LVM volume group `VG_XenStorage-<sr>` on one iSCSI LUN
 * (device_config target, targetIQN, SCSIid, port, chapuser/chappassword,
 * incoming_chapuser/incoming_chappassword). Images are thick LVs (lib/sr/lvm-backend).
 *
 * Limits of this round: the first address of `target` is used (no multipath);
 * detach logs out of the target even if another SR uses it (no session refcount);
 * LVs stay active while the SR is attached (no per-VDI activation).
 */
import { unlink } from 'node:fs/promises';
import { SMError, type Driver, type Request } from '../lib/smapi/index.js';
import * as iscsi from '../lib/os/iscsi.js';
import { Lvm, vgNameForSr } from '../lib/os/lvm.js';
import { runTool } from '../lib/os/run.js';
import { byIdPath, checkScsiId, readScsiId, scsiDiskInfo, scsiIdFromLinks } from '../lib/os/scsi.js';
import { udevRunning, waitFor, waitForPath } from '../lib/os/udev.js';
import { checkHost, checkPort, checkIqn, InvalidArgumentError } from '../lib/os/validate.js';
import { readAttachRecord, type BackendSpec } from '../lib/sr/attach-record.js';
import { LvmBackend } from '../lib/sr/lvm-backend.js';
import { linkSrMount } from '../lib/sr/mount-link.js';
import { srMountPath } from '../lib/sr/paths.js';
import type { SrType } from '../lib/sr/sr-type.js';
import { srDriver } from '../lib/sr/verbs.js';
import { getLog } from '../lib/log/index.js';

const VG_PREFIX = 'VG_XenStorage-';
const LUN_WAIT_MS = Number(process.env.SM_ISCSI_LUN_WAIT_MS ?? 20_000);

interface Portal {
  address: string;
  port: number;
}

/** The validated device_config (every value checked before it reaches a tool). */
interface Config {
  portal: Portal;
  iqn?: string;
  scsiId?: string;
  chap?: iscsi.Chap;
}

function configOf(req: Request): Config {
  const dc = req.device_config;
  try {
    if (!dc.target) throw new SMError('ConfigTargetMissing');
    const address = checkHost(dc.target.split(',')[0]!.trim(), 'target');
    const port = dc.port ? checkPort(dc.port) : iscsi.ISCSI_PORT;
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
    return { portal: { address, port }, ...(iqn ? { iqn } : {}), ...(scsiId ? { scsiId } : {}), ...(chap ? { chap } : {}) };
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

/** The target IQNs to log in to: the configured one (checked against discovery), or all of them for `*`. */
async function targetsOf(cfg: Config): Promise<string[]> {
  const found = await iscsi.discover(cfg.portal.address, cfg.portal.port).catch(loginError);
  const iqns = [...new Set(found.map((t) => t.iqn))];
  if (cfg.iqn === '*') return iqns;
  if (!iqns.includes(cfg.iqn!)) {
    throw new SMError('ISCSILogin', `target ${cfg.iqn} is not offered by ${cfg.portal.address}:${cfg.portal.port} (offered: ${iqns.join(', ') || 'none'})`);
  }
  return [cfg.iqn!];
}

interface Logged {
  iqns: string[];
  /** The IQNs this call logged in to (and should log out of when done). */
  fresh: string[];
}

async function loginAll(cfg: Config): Promise<Logged> {
  const iqns = await targetsOf(cfg);
  const fresh: string[] = [];
  for (const iqn of iqns) {
    if (await iscsi.findSession(iqn, cfg.portal.address, cfg.portal.port)) continue;
    await iscsi.login(iqn, cfg.portal.address, cfg.portal.port, cfg.chap).catch(loginError);
    fresh.push(iqn);
  }
  return { iqns, fresh };
}

async function logoutFresh(cfg: Config, logged: Logged): Promise<void> {
  for (const iqn of logged.fresh) await iscsi.logout(iqn, cfg.portal.address, cfg.portal.port).catch(() => undefined);
}

interface Lun {
  device: string;
  lun: number;
  scsiId: string;
}

/** The disks the sessions to `iqns` bring, once the kernel has attached them. */
async function lunsOf(cfg: Config, iqns: string[]): Promise<Lun[]> {
  const out: Lun[] = [];
  for (const iqn of iqns) {
    const s = await iscsi.findSession(iqn, cfg.portal.address, cfg.portal.port);
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
async function deviceOf(cfg: Config, iqns: string[]): Promise<string> {
  const lun = (await lunsOf(cfg, iqns)).find((l) => l.scsiId === cfg.scsiId);
  if (!lun) throw new SMError('ConfigSCSIid', `no LUN with SCSIid ${cfg.scsiId} on ${iqns.join(', ')}`);
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
 * reads EIO after the next login. Only attach activates the VG. lvm2 >= 2.03.12.
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
    const device = await deviceOf(cfg, logged.iqns);
    return await fn(device, new Lvm({ devices: [device] }));
  } finally {
    await logoutFresh(cfg, logged);
  }
}

export const lvmoiscsiSrType: SrType = {
  driver: 'LVMoISCSISR',
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
      const device = await deviceOf(cfg, logged.iqns);
      const lvm = new Lvm({ devices: [device] });
      if ((await lvm.vgs().catch(() => [])).every((v) => v.name !== vg)) throw new SMError('SRUnavailable', `no volume group ${vg} on LUN ${cfg.scsiId}`);
      await lvm.vgchange(vg, true);
      await linkSrMount(sr, `/dev/${vg}`); // for operators; the backend uses /dev paths
      getLog().info(`SR ${sr}: ${vg} active on ${device}`);
      return { kind: 'lvm', vg, devices: [device] };
    } catch (e) {
      await logoutFresh(cfg, logged);
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
    if (cfg.iqn && cfg.iqn !== '*') await iscsi.logout(cfg.iqn, cfg.portal.address, cfg.portal.port).catch(() => undefined);
    else if (cfg.iqn === '*') {
      for (const s of await iscsi.sessions().catch(() => [])) {
        if (s.address === cfg.portal.address && s.port === cfg.portal.port) await iscsi.logout(s.iqn, s.address, s.port).catch(() => undefined);
      }
    }
  },

  async probe(req) {
    const cfg = configOf(req);
    if (!cfg.iqn) {
      const found = await iscsi.discover(cfg.portal.address, cfg.portal.port).catch(loginError);
      process.stderr.write(iqnListXml(found.map((t) => ({ address: t.address, iqn: t.iqn }))));
      throw new SMError('ConfigTargetIQNMissing');
    }
    const logged = await loginAll(cfg);
    try {
      const luns = await lunsOf(cfg, logged.iqns);
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
      await logoutFresh(cfg, logged);
    }
  },
};

/**
 * vdi_resize is withheld: a thick LV must grow with the virtual size, and the
 * shared resize (lib/sr/vdi-resize.ts) has no backend hook for that yet.
 */
function withoutResize(driver: Driver): Driver {
  const verbs = { ...driver.verbs };
  delete verbs.vdi_resize;
  delete verbs.vdi_resize_online;
  return { ...driver, verbs };
}

export const lvmoiscsiSrDriver = withoutResize(srDriver(lvmoiscsiSrType));

// The backend class is part of this driver's surface for tests.
export { LvmBackend };
