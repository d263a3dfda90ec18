// Changed-block tracking driven as the toolstack drives it: the CBT verbs on
// a FileSR `--serve` driver, writes through the VDI's NBD socket, snapshots
// while it is served.
import fs from 'node:fs';
import path from 'node:path';
import { CBT_BLOCK_SIZE, fromXapiBase64, isSet, readLog, type CbtLog } from '../../lib/cbt/index.js';
import { openNbd } from '../helpers/nbd-vdi.js';
import type { World } from '../helpers/world.js';

export const BLOCK = CBT_BLOCK_SIZE;

const vdiArgs = (vdi: string, extra: Record<string, unknown> = {}) => ({ vdi_uuid: vdi, vdi_location: vdi, ...extra });

export async function activate(w: World, vdi: string, writable = true): Promise<void> {
  await w.s.call('vdi_attach', vdiArgs(vdi, { args: [String(writable)] }));
  await w.s.call('vdi_activate', vdiArgs(vdi, { args: [String(writable)] }));
}

export async function deactivate(w: World, vdi: string): Promise<void> {
  await w.s.call('vdi_deactivate', vdiArgs(vdi));
  await w.s.call('vdi_detach', vdiArgs(vdi));
}

export const enableCbt = (w: World, vdi: string) => w.s.call('vdi_enable_cbt', vdiArgs(vdi));
export const disableCbt = (w: World, vdi: string) => w.s.call('vdi_disable_cbt', vdiArgs(vdi));
export const dataDestroy = (w: World, vdi: string) => w.s.call('vdi_data_destroy', vdiArgs(vdi));

/** vdi_list_changed_blocks from `from` to `to`, decoded from xapi's base64 (MSB first) to block numbers. */
export async function changedBlocks(w: World, from: string, to: string): Promise<number[]> {
  const text = (await w.s.call('vdi_list_changed_blocks', vdiArgs(from, { args: [to] }))) as string;
  return setBlocks(fromXapiBase64(text));
}

export function setBlocks(bitmap: Buffer): number[] {
  const out: number[] = [];
  for (let b = 0; b < bitmap.length * 8; b++) if (isSet(bitmap, b)) out.push(b);
  return out;
}

/** The 64 KiB blocks bytes [offset, offset+length) touch. */
export function blocksTouched(offset: number, length: number): number[] {
  const out: number[] = [];
  for (let b = Math.floor(offset / BLOCK); b <= Math.floor((offset + length - 1) / BLOCK); b++) out.push(b);
  return out;
}

export const union = (...sets: number[][]) => [...new Set(sets.flat())].sort((a, b) => a - b);

export const logPath = (w: World, vdi: string) => path.join(w.ctx.location, `${vdi}.cbtlog`);
export const hasLog = (w: World, vdi: string) => fs.existsSync(logPath(w, vdi));
export const readVdiLog = (w: World, vdi: string): Promise<CbtLog> => readLog(logPath(w, vdi));

/** Writes through the served VDI's NBD socket (one connection, flushed), keeping the World's model in step. */
export async function writeThrough(w: World, vdi: string, writes: readonly (readonly [offset: number, data: Buffer])[]): Promise<void> {
  const c = await openNbd(w.ctx, vdi);
  try {
    for (const [offset, data] of writes) {
      await c.write(offset, data);
      w.models.get(vdi)!.write(offset, data);
    }
    await c.flush();
  } finally {
    c.close();
  }
}
