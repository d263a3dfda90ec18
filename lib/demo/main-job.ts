/**
 * The main job on an embedded default: a whole File SR lifecycle in a temp
 * folder, driven exactly as a toolstack drives it (drivers/FileSR with the
 * XML-RPC call as its argument), with data written through `sm-vhd write`,
 * snapshots, a clone, deletes, a scan, a garbage collection, re-attach and
 * delete. Every VDI's data is checked against an in-memory model; the VHD
 * trees and the SMlog excerpt are printed.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { encodeMethodCall, parseMethodResponse } from '../smapi/index.js';

const run = promisify(execFile);
const here = (rel: string) => fileURLToPath(new URL(rel, import.meta.url));
const FILE_SR = here('../../../drivers/FileSR');
const SM_VHD = here('../vhd/cli/sm-vhd.js');
const SM_GC = here('../../gc/sm-gc.js');
const SM_CLI = here('../cli/sm.js');

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

const step = (msg: string) => console.log(`- ${msg}`);
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex').slice(0, 12);

async function main(): Promise<void> {
  const keep = process.argv[2] !== undefined;
  const dir = process.argv[2] ?? mkdtempSync(join(tmpdir(), 'sm-main-job-'));
  const env = { ...process.env, SM_ROOT: join(dir, 'host'), SM_GC: 'off' };
  const location = join(dir, 'sr');
  const sr = randomUUID();
  const models = new Map<string, Buffer>();
  let failed = false;

  const call = async (verb: string, extra: Record<string, unknown> = {}, args: string[] = []) => {
    const xml = encodeMethodCall(verb, [
      { host_ref: 'OpaqueRef:main-job', session_ref: 'OpaqueRef:secret-session', command: verb, args, device_config: { SRmaster: 'true', location }, sr_uuid: sr, ...extra },
    ]);
    const { stdout } = await run(FILE_SR, [xml], { env });
    const reply = parseMethodResponse(stdout);
    if (reply.kind === 'fault') throw new Error(`${verb}: fault ${reply.faultCode}: ${reply.faultString}`);
    return reply.value as Record<string, unknown> | null;
  };
  const tool = async (cmd: string, args: string[]) => (await run(process.execPath, [cmd, ...args], { env })).stdout;
  const imagePath = (vdi: string) => join(env.SM_ROOT, 'run', 'sr-mount', sr, `${vdi}.vhd`);
  const write = async (vdi: string, offset: number, length: number) => {
    const data = randomBytes(length);
    const file = join(dir, 'data.bin');
    writeFileSync(file, data);
    await tool(SM_VHD, ['write', '-n', imagePath(vdi), '-i', file, '-o', String(offset)]);
    data.copy(models.get(vdi)!, offset);
    step(`wrote ${length} bytes at ${offset} into ${vdi.slice(0, 8)}`);
  };
  const verify = async (vdi: string) => {
    const raw = join(dir, 'export.raw');
    await tool(SM_VHD, ['export', '-n', imagePath(vdi), '-o', raw]);
    const same = readFileSync(raw).equals(models.get(vdi)!);
    failed ||= !same;
    step(`${vdi.slice(0, 8)} reads ${same ? 'exactly as written' : 'DIFFERENTLY FROM THE MODEL'} (sha256 ${sha(models.get(vdi)!)})`);
  };
  const tree = async (title: string) => {
    console.log(`\n${title}`);
    process.stdout.write(await tool(SM_CLI, ['tree', sr]));
  };

  try {
    console.log(`File SR lifecycle in ${dir}\n`);
    await call('sr_create', {}, ['0']);
    step(`sr_create ${sr} at ${location}`);
    await call('sr_attach');
    step('sr_attach');
    const vdi = (await call('vdi_create', {}, [String(SIZE), 'system disk', 'main job', '', 'false', '', '', 'false']))!.uuid as string;
    models.set(vdi, Buffer.alloc(SIZE));
    step(`vdi_create ${vdi} (${SIZE / MiB} MiB)`);
    await write(vdi, 0, 3 * MiB + 123);

    const snap = (await call('vdi_snapshot', { vdi_uuid: vdi }))!.uuid as string;
    models.set(snap, Buffer.from(models.get(vdi)!));
    step(`vdi_snapshot -> ${snap} (the VDI keeps its uuid as the writable leaf)`);
    await write(vdi, 10 * MiB + 1, 2 * MiB);
    const clone = (await call('vdi_clone', { vdi_uuid: vdi }))!.uuid as string;
    models.set(clone, Buffer.from(models.get(vdi)!));
    step(`vdi_clone -> ${clone}`);
    await write(clone, 40 * MiB, 4096);
    await write(vdi, SIZE - 1000, 1000);
    await tree('VHD trees after snapshot and clone:');

    for (const v of [vdi, snap, clone]) await verify(v);
    await call('vdi_delete', { vdi_uuid: snap });
    models.delete(snap);
    step(`vdi_delete ${snap}`);
    await call('sr_scan');
    step('sr_scan');
    await tool(SM_GC, ['-u', sr, '-g']);
    step('sm-gc -g: one garbage collection');
    await tree('VHD trees after the GC:');
    for (const v of [vdi, clone]) await verify(v);

    await call('sr_detach');
    await call('sr_attach');
    step('sr_detach, sr_attach again');
    for (const v of [vdi, clone]) await verify(v);
    for (const v of [clone, vdi]) await call('vdi_delete', { vdi_uuid: v });
    step('vdi_delete of the remaining VDIs');
    await call('sr_detach');
    await call('sr_delete');
    step('sr_detach, sr_delete');

    const smlog = readFileSync(join(env.SM_ROOT, 'var/log/SMlog'), 'utf8').split('\n');
    const excerpt = smlog.filter((l) => / SMGC: | vdi_snapshot | vdi_clone | sr_create /.test(l)).slice(0, 40);
    console.log(`\nSMlog excerpt (${smlog.length - 1} lines in all; session_ref masked):`);
    for (const l of excerpt) console.log(`  ${l.length > 180 ? l.slice(0, 177) + '...' : l}`);
    console.log(failed ? '\nRESULT: FAILED' : '\nRESULT: OK');
    if (failed) process.exitCode = 1;
  } catch (err) {
    console.log(`\nRESULT: FAILED: ${(err as Error).message}`);
    process.exitCode = 1;
  } finally {
    if (!keep) rmSync(dir, { recursive: true, force: true });
  }
}

await main();
