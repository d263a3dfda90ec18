/**
 * SCSI disks (an iSCSI LUN is one): the SCSIid that names a LUN stably across
 * hosts and logins, and vendor/serial/size for probe replies.
 */
import { readdir, readFile, readlink, realpath } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename } from 'node:path';
import { runnerOf } from './tool.js';
import type { ToolContext } from './tool.js';
import { checkArg, checkDevicePath, InvalidArgumentError } from './validate.js';

export const SCSI_ID = '/lib/udev/scsi_id';
const BY_ID = '/dev/disk/by-id';

export interface ScsiDisk {
  /** /dev/sdX */
  device: string;
  /** Host:channel:target:lun, e.g. "0:0:0:1". */
  hctl: string;
  lun: number;
  vendor: string;
  model: string;
  /** Unit serial number (VPD page 0x80), "" when the device has none. */
  serial: string;
  sizeBytes: number;
}

/** A SCSIid as scsi_id prints it (e.g. "360000000000000000e00000000010001"). */
export function checkScsiId(value: unknown): string {
  const v = checkArg('SCSIid', value);
  if (!/^[A-Za-z0-9_.:-]{1,128}$/.test(v)) throw new InvalidArgumentError('SCSIid', 'must be letters, digits and _.:-', v);
  return v;
}

/** `/lib/udev/scsi_id -g -u -d DEV`: the page 0x83 identifier, the SM's SCSIid. */
export async function readScsiId(device: string, ctx?: ToolContext): Promise<string> {
  const { stdout } = await runnerOf(ctx)(SCSI_ID, ['-g', '-u', '-d', checkDevicePath(device)], { timeoutMs: ctx?.timeoutMs ?? 30_000 });
  const id = stdout.trim();
  if (!id) throw new Error(`${device}: scsi_id printed no identifier`);
  return id;
}

/** /dev/disk/by-id/scsi-<SCSIid> (a udev link). */
export const byIdPath = (scsiId: string): string => `${BY_ID}/scsi-${checkScsiId(scsiId)}`;

/**
 * The device of a SCSIid: the udev by-id link when it exists, else the sd disk
 * whose scsi_id matches (hosts without udev). undefined when none has it.
 */
export async function deviceForScsiId(scsiId: string, ctx?: ToolContext): Promise<string | undefined> {
  const link = byIdPath(scsiId);
  if (existsSync(link)) return link;
  for (const name of await sdDisks()) {
    const id = await readScsiId(`/dev/${name}`, ctx).catch(() => undefined);
    if (id === scsiId) return `/dev/${name}`;
  }
  return undefined;
}

/** The SCSIid of a device from its by-id link name, without running scsi_id. */
export async function scsiIdFromLinks(device: string): Promise<string | undefined> {
  const real = await realpath(device);
  const names = await readdir(BY_ID).catch(() => [] as string[]);
  for (const n of names) {
    if (!n.startsWith('scsi-')) continue;
    const target = await realpath(`${BY_ID}/${n}`).catch(() => undefined);
    if (target === real) return n.slice('scsi-'.length);
  }
  return undefined;
}

async function sdDisks(): Promise<string[]> {
  return (await readdir('/sys/block').catch(() => [] as string[])).filter((n) => /^sd[a-z]+$/.test(n));
}

/** Vendor, model, serial, size and H:C:T:L of a SCSI disk, from sysfs. */
export async function scsiDiskInfo(device: string): Promise<ScsiDisk> {
  const name = basename(await realpath(checkDevicePath(device)));
  const sys = `/sys/block/${name}`;
  const dev = `${sys}/device`;
  const hctl = basename(await readlink(dev));
  const text = async (p: string) => (await readFile(p, 'latin1').catch(() => '')).trim();
  const serialPage = await readFile(`${dev}/vpd_pg80`).catch(() => undefined);
  return {
    device: `/dev/${name}`,
    hctl,
    lun: Number(hctl.split(':')[3] ?? NaN),
    vendor: await text(`${dev}/vendor`),
    model: await text(`${dev}/model`),
    serial: serialPage ? parseVpdSerial(serialPage) : '',
    sizeBytes: Number(await text(`${sys}/size`)) * 512,
  };
}

/** VPD page 0x80 (unit serial number): 4-byte header, then the serial in ASCII. */
export function parseVpdSerial(page: Buffer): string {
  if (page.length < 4 || page[1] !== 0x80) return '';
  const len = page.readUInt16BE(2);
  return page.subarray(4, 4 + len).toString('latin1').replace(/\0/g, '').trim();
}
