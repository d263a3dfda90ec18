#!/usr/bin/env node
/**
 * sm: the operator's view of attached SRs.
 *   sm sr-scan <sr>        scan, then print the VDI table
 *   sm tree <sr>           the VHD trees, as the GC logs them
 *   sm log [--vdi <uuid>]  SMlog lines (about one VDI and its chain)
 *   sm rebuild-metadata <sr> [--dir DIR | --vg VG] [--type T]
 *                          new SR metadata made from the images (the old copy kept)
 *   sm datapath [<sr>]     the VDIs served here over NBD: sockets, clients, paused
 */
import { readdir, readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { initLog, smlogPath } from '../log/index.js';
import { activeVdiSet } from '../sr/activation.js';
import { attachedBackend, backendOf, listAttachRecords, readAttachRecord } from '../sr/attach-record.js';
import { servedHere } from '../sr/datapath.js';
import type { StorageBackend } from '../sr/backend.js';
import { FileBackend } from '../sr/file-backend.js';
import { LvmBackend } from '../sr/lvm-backend.js';
import { rebuildMetadata } from '../sr/metadata-rebuild.js';
import { isUuid } from '../sr/ids.js';
import { lockOrFail } from '../sr/lock.js';
import { runStateDir } from '../sr/paths.js';
import { recoverSrJournals } from '../sr/recovery.js';
import { Repository, type ImageNode } from '../sr/repository.js';
import { scanSr } from '../sr/scan.js';
import { formatForest, num2str } from '../sr/tree-format.js';
import { leftAloneFor } from '../sr/unreadable.js';

const USAGE = `usage: sm sr-scan <sr_uuid> | sm tree <sr_uuid> | sm log [--vdi <uuid>] | sm rebuild-metadata <sr_uuid> [--dir DIR | --vg VG] [--type T] | sm datapath [<sr_uuid>]\n`;
const out = (s: string) => process.stdout.write(s + '\n');

function srArg(args: string[]): string {
  const sr = args[0];
  if (!isUuid(sr)) throw new Error(`need an SR uuid, got ${JSON.stringify(sr ?? '')}`);
  return sr.toLowerCase();
}

async function srScan(args: string[]): Promise<number> {
  const sr = srArg(args);
  const repo = new Repository(await attachedBackend(sr));
  const lock = await lockOrFail(sr, 'sr', 60_000);
  let vdis;
  try {
    vdis = await repo.backend.withImagesActive([], async () => {
      await recoverSrJournals(repo);
      return scanSr(repo);
    });
  } finally {
    await lock.release();
  }
  const rows = vdis
    .sort((a, b) => Number(a.hidden) - Number(b.hidden) || a.name_label.localeCompare(b.name_label) || a.uuid.localeCompare(b.uuid))
    .map((v) => [v.uuid, v.name_label || '-', num2str(v.virtual_size), num2str(v.physical_utilisation), v.hidden ? 'yes' : 'no', v.parent || '-']);
  const head = ['uuid', 'name', 'virtual', 'physical', 'hidden', 'parent'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  for (const r of [head, ...rows]) out(r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd());
  out(`${vdis.length} images`);
  return 0;
}

async function tree(args: string[]): Promise<number> {
  const sr = srArg(args);
  const repo = new Repository(await attachedBackend(sr));
  const meta = await repo.srRecord();
  const { records } = await repo.records.listVdis();
  const { nodes } = await repo.tree();
  for (const line of formatForest({ uuid: sr, name_label: meta.name_label }, nodes, await activeVdiSet(repo.backend), records.size)) out(line);
  for (const why of leftAloneFor(nodes).reasons) out(why);
  return 0;
}

/** The VDI's whole chain (ancestors and descendants) in whichever attached SR holds it. */
async function chainOf(vdi: string): Promise<Set<string>> {
  const ids = new Set([vdi]);
  const srs = (await readdir(runStateDir('sr')).catch(() => [] as string[])).map((n) => n.replace(/\.json$/, '')).filter(isUuid);
  for (const sr of srs) {
    const { nodes } = await new Repository(await attachedBackend(sr)).tree().catch(() => ({ nodes: new Map<string, ImageNode>() }));
    if (!nodes.has(vdi)) continue;
    for (let n = nodes.get(vdi); n?.parent && !ids.has(n.parent); n = nodes.get(n.parent)) ids.add(n.parent);
    const down = [vdi];
    while (down.length) for (const c of nodes.get(down.pop()!)?.children ?? []) if (!ids.has(c) && ids.add(c)) down.push(c);
  }
  return ids;
}

async function logLines(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { vdi: { type: 'string' } }, strict: true });
  const text = await readFile(smlogPath(), 'utf8').catch(() => '');
  let lines = text.split('\n').filter(Boolean);
  if (values.vdi !== undefined) {
    if (!isUuid(values.vdi)) throw new Error(`--vdi needs a uuid`);
    // Full uuids, and the 8-character prefixes the GC's tree lines use.
    const keys = [...(await chainOf(values.vdi.toLowerCase()))].flatMap((u) => [u, u.slice(0, 8)]);
    lines = lines.filter((l) => keys.some((k) => l.includes(k)));
  }
  for (const l of lines) out(l);
  return 0;
}

/**
 * An SR whose metadata sr_attach refuses is not attached: the operator names
 * its storage (a File SR's directory, an NFS SR's directory on a mount made by
 * hand, an LVM SR's volume group once its LUN is visible).
 */
async function rebuild(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, options: { dir: { type: 'string' }, vg: { type: 'string' }, type: { type: 'string' } }, allowPositionals: true, strict: true });
  const sr = srArg(positionals);
  const record = await readAttachRecord(sr);
  let backend: StorageBackend;
  if (values.dir !== undefined) backend = new FileBackend(sr, values.dir);
  else if (values.vg !== undefined) backend = new LvmBackend(sr, values.vg, []);
  else if (record) backend = backendOf(record);
  else throw new Error(`SR ${sr} is not attached here: name its storage with --dir or --vg`);
  const driver = values.type ?? record?.driver ?? (values.vg !== undefined ? 'LVMoISCSISR' : 'FileSR');
  const lock = await lockOrFail(sr, 'sr', 60_000);
  try {
    const { kept, vdis } = await rebuildMetadata(new Repository(backend), driver);
    out(`SR ${sr}: metadata rebuilt, ${vdis} images recorded`);
    out(kept ? `the old metadata is kept in ${kept}` : 'there was no old metadata');
  } finally {
    await lock.release();
  }
  return 0;
}

/** One row per VDI served on this host (every attached SR, or the one named). */
async function datapath(args: string[]): Promise<number> {
  const srs = args.length > 0 ? [srArg(args)] : (await listAttachRecords()).map((r) => r.sr_uuid);
  const head = ['sr', 'vdi', 'mode', 'state', 'clients', 'socket'];
  const rows: string[][] = [];
  for (const sr of srs) {
    for (const v of await servedHere(sr)) {
      rows.push([sr, v.vdi, v.writable ? 'rw' : 'ro', v.paused ? `paused ${v.pausedMs ?? 0}ms` : 'serving', String(v.clients), v.socket]);
    }
  }
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  for (const r of [head, ...rows]) out(r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd());
  out(`${rows.length} VDIs served`);
  return 0;
}

async function main(argv: string[]): Promise<number> {
  initLog('SM');
  const [cmd, ...args] = argv;
  const commands: Record<string, (a: string[]) => Promise<number>> = { 'sr-scan': srScan, tree, log: logLines, 'rebuild-metadata': rebuild, datapath };
  const run = cmd ? commands[cmd] : undefined;
  if (!run) {
    process.stderr.write(USAGE);
    return 2;
  }
  try {
    return await run(args);
  } catch (err) {
    process.stderr.write(`sm ${cmd}: ${(err as Error).message}\n`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
