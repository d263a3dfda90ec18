/**
 * SR benchmarks through the real driver executable: vdi_snapshot latency with a
 * process per call and through --serve, sr_scan of an SR with 1200 images, and
 * vdi_create / vdi_snapshot / vdi_delete / sr_scan against the number of images in the SR.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { callUnixSocket, encodeMethodCall } from '../../lib/smapi/index.js';
import { randomUUID } from 'node:crypto';
import { createDynamic } from '../../lib/vhd/index.js';
import { FileBackend } from '../../lib/sr/file-backend.js';
import { newVdiRecord } from '../../lib/sr/metadata.js';
import { Repository } from '../../lib/sr/repository.js';
import { batRoomFor } from '../../lib/sr/sizes.js';
import { mapLimit } from '../../lib/util/map-limit.js';
import { percentile, report, timed, workDir } from './measure.js';

const run = promisify(execFile);
const FILE_SR = fileURLToPath(new URL('../../../drivers/FileSR', import.meta.url));
const SR = '5e1ec7ed-0000-4000-8000-00000000be0c';

export interface Harness {
  call(method: string, extra?: Record<string, unknown>, args?: string[]): Promise<unknown>;
  callProcess(method: string, extra?: Record<string, unknown>): Promise<void>;
  /** Starts the driver's resident server where the executable hands calls to (hand-off.ts); returns its pid. */
  startResident(): Promise<number>;
  close(): Promise<void>;
}

async function waitForSocket(socket: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    try {
      await callUnixSocket(socket, 'sr_get_driver_info', { host_ref: 'OpaqueRef:bench', command: 'sr_get_driver_info' });
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(`${socket}: no server`);
}

export async function startSr(dir: string): Promise<Harness> {
  const env = { ...process.env, SM_ROOT: join(dir, 'root'), SM_GC: 'off' };
  mkdirSync(env.SM_ROOT, { recursive: true });
  const location = join(dir, 'sr');
  const socket = join(dir, 'sm.sock');
  const params = (method: string, extra: Record<string, unknown> = {}, args: string[] = []) => ({
    host_ref: 'OpaqueRef:bench',
    command: method,
    args,
    device_config: { SRmaster: 'true', location },
    sr_uuid: SR,
    ...extra,
  });
  const servers = [spawn(FILE_SR, ['--serve', socket], { env, stdio: 'ignore' })];
  await waitForSocket(socket);
  const call = async (method: string, extra?: Record<string, unknown>, args?: string[]) => {
    const reply = (await callUnixSocket(socket, method, params(method, extra, args))) as { result?: unknown; error?: { message: string } };
    if (reply.error) throw new Error(`${method}: ${reply.error.message}`);
    return reply.result;
  };
  return {
    call,
    async callProcess(method, extra) {
      const { stdout } = await run(FILE_SR, [encodeMethodCall(method, [params(method, extra)])], { env });
      if (stdout.includes('<fault>')) throw new Error(`${method} failed: ${stdout}`);
    },
    async startResident() {
      const resident = join(env.SM_ROOT, 'run/sm/serve/FileSR.sock');
      const server = spawn(FILE_SR, ['--serve', resident], { env, stdio: 'ignore' });
      servers.push(server);
      await waitForSocket(resident);
      return server.pid!;
    },
    async close() {
      for (const server of servers) {
        server.kill('SIGTERM');
        await new Promise((r) => server.once('exit', r));
      }
    },
  };
}

async function snapshotLatency(): Promise<void> {
  const { dir, cleanup } = workDir('sr-snapshot');
  const sr = await startSr(dir);
  try {
    await sr.call('sr_create', {}, ['0']);
    await sr.call('sr_attach');
    // A fresh 10 GiB VDI per snapshot (so chains stay short); each way in a run of its own.
    const newVdi = async (label: string) =>
      ((await sr.call('vdi_create', {}, ['10737418240', label, '', '', 'false', '', '', 'false'])) as { uuid: string }).uuid;
    const served: number[] = [];
    for (let i = 0; i < 25; i++) {
      const vdi = await newVdi(`served${i}`);
      served.push((await timed(() => sr.call('vdi_snapshot', { vdi_uuid: vdi }))).ms);
    }
    const perProcess: number[] = [];
    for (let i = 0; i < 25; i++) {
      const vdi = await newVdi(`process${i}`);
      perProcess.push((await timed(() => sr.callProcess('vdi_snapshot', { vdi_uuid: vdi }))).ms);
    }
    // The same, with the driver's resident server running: each process hands its call over.
    const residentPid = await sr.startResident();
    const handedOff: number[] = [];
    for (let i = 0; i < 25; i++) {
      const vdi = await newVdi(`resident${i}`);
      handedOff.push((await timed(() => sr.callProcess('vdi_snapshot', { vdi_uuid: vdi }))).ms);
    }
    const log = readFileSync(join(dir, 'root/var/log/SMlog'), 'utf8');
    const byResident = log.split('\n').filter((l) => l.includes(`SM: [${residentPid}] vdi_snapshot done`)).length;
    const nodeStarts: number[] = [];
    for (let i = 0; i < 10; i++) nodeStarts.push((await timed(() => run(process.execPath, ['-e', '0']))).ms);
    const p = (xs: number[]) => `${percentile(xs, 50).toFixed(1)} / ${percentile(xs, 95).toFixed(1)} ms`;
    report('vdi_snapshot latency (File SR, 10 GiB VDI)', [
      ['one process per call, no resident server, p50 / p95', p(perProcess)],
      ['one process per call, resident server running, p50 / p95 (goal p50 <= 150 ms)', p(handedOff)],
      ['  calls the resident server answered', `${byResident} of ${handedOff.length}`],
      ['through --serve, p50 / p95 (goal p50 <= 10 ms)', p(served)],
      ['baseline: `node -e 0` start, same run, p50', `${percentile(nodeStarts, 50).toFixed(1)} ms`],
    ]);
  } finally {
    await sr.close();
    cleanup();
  }
}

async function scanLatency(): Promise<void> {
  const { dir, cleanup } = workDir('sr-scan');
  const sr = await startSr(dir);
  try {
    await sr.call('sr_create', {}, ['0']);
    await sr.call('sr_attach');
    const vdis: string[] = [];
    for (let i = 0; i < 1000; i++) {
      vdis.push(((await sr.call('vdi_create', {}, ['1073741824', `vm${i}`, '', '', 'false', '', '', 'false'])) as { uuid: string }).uuid);
    }
    for (let i = 0; i < 100; i++) await sr.call('vdi_snapshot', { vdi_uuid: vdis[i] }); // 200 images: base + snapshot
    const samples: number[] = [];
    let count = 0;
    for (let i = 0; i < 5; i++) {
      const { value, ms } = await timed(() => sr.call('sr_scan'));
      count = (value as unknown[]).length;
      samples.push(ms);
    }
    report(`sr_scan of ${count} images through --serve`, [
      ['p50 / max of 5 scans (goal <= 1 s)', `${percentile(samples, 50).toFixed(0)} / ${Math.max(...samples).toFixed(0)} ms`],
    ]);
  } finally {
    await sr.close();
    cleanup();
  }
}

/** Fills an SR with `n` 1 GiB VDIs through the library (images and records), much faster than n driver calls. */
async function populate(location: string, n: number): Promise<void> {
  const repo = new Repository(new FileBackend(SR, location));
  const uuids = Array.from({ length: n }, () => randomUUID());
  await mapLimit(uuids, 16, (u) => createDynamic(repo.imagePath(u), 2 ** 30, { maxSize: batRoomFor(2 ** 30) }));
  for (let i = 0; i < n; i += 500) {
    await repo.records.putVdis(uuids.slice(i, i + 500).map((u, j) => newVdiRecord(u, { name_label: `vm${i + j}`, sm_config: { vdi_type: 'vhd' } })));
  }
}

/**
 * vdi_create, vdi_snapshot, vdi_delete (through --serve) and sr_scan at 100,
 * 1,000 and 5,000 images, in one run: the three SRs are built first, then
 * measured in rounds that take one create, one snapshot of the new VDI and one
 * delete of that snapshot on each in turn, so that load from elsewhere on the
 * machine falls on every size alike; then the scans, also in turns. Last, the
 * records of the largest SR are read the way a scan reads them (one file per
 * VDI) and, in the same turns, as the single document of the layout before.
 */
async function costBySrSize(): Promise<void> {
  const sizes = [100, 1000, 5000];
  type Sized = { n: number; dir: string; sr: Harness; cleanup: () => void; create: number[]; snapshot: number[]; del: number[]; scan: number[]; images: number };
  const srs: Sized[] = [];
  let records: { perVdi: number[]; oneDocument: number[] } | undefined;
  try {
    for (const n of sizes) {
      const { dir, cleanup } = workDir(`sr-size-${n}`);
      const sr = await startSr(dir);
      srs.push({ n, dir, sr, cleanup, create: [], snapshot: [], del: [], scan: [], images: 0 });
      await sr.call('sr_create', {}, ['0']);
      await sr.call('sr_attach');
      await populate(join(dir, 'sr'), n);
    }
    await run('sync', []); // the populating writes are not left for the measured fsyncs to flush
    for (let i = 0; i < 40; i++) {
      for (const x of srs) {
        const { value, ms } = await timed(() => x.sr.call('vdi_create', {}, ['1073741824', `new${i}`, '', '', 'false', '', '', 'false']));
        x.create.push(ms);
        const snap = await timed(() => x.sr.call('vdi_snapshot', { vdi_uuid: (value as { uuid: string }).uuid }));
        x.snapshot.push(snap.ms);
        x.del.push((await timed(() => x.sr.call('vdi_delete', { vdi_uuid: (snap.value as { uuid: string }).uuid }))).ms);
      }
    }
    for (let i = 0; i < 3; i++) {
      for (const x of srs) {
        const { value, ms } = await timed(() => x.sr.call('sr_scan'));
        x.images = (value as unknown[]).length;
        x.scan.push(ms);
      }
    }
    records = await recordReads(join(srs[srs.length - 1]!.dir, 'sr'));
  } finally {
    for (const x of srs) {
      await x.sr.close();
      x.cleanup();
    }
  }
  const f = (x: number) => `${x.toFixed(1)} ms`;
  const p50 = (xs: number[]) => percentile(xs, 50);
  const perImage = (x: Sized) => (p50(x.scan) * 1000) / x.images;
  const [small, , big] = srs;
  const ratio = (of: (x: Sized) => number) => (of(big!) / of(small!)).toFixed(2);
  report('verb cost against SR size (File SR through --serve; 40 creates, snapshots and deletes each, interleaved)', [
    ...srs.map((x) => [`${x.n} VDIs: vdi_create / vdi_snapshot / vdi_delete (of the snapshot), p50`, `${f(p50(x.create))} / ${f(p50(x.snapshot))} / ${f(p50(x.del))}`] as [string, string]),
    [`ratio ${big!.n} / ${small!.n}: vdi_create, vdi_snapshot, vdi_delete (goal <= 1.5)`, `${ratio((x) => p50(x.create))}, ${ratio((x) => p50(x.snapshot))}, ${ratio((x) => p50(x.del))}`],
    ...srs.map((x) => [`${x.n} VDIs, ${x.images} images: sr_scan p50 of 3, per image`, `${f(p50(x.scan))}, ${(perImage(x)).toFixed(0)} us`] as [string, string]),
    [`sr_scan per image, ratio ${big!.n} / ${small!.n}`, ratio(perImage)],
    [`reading the ${big!.images} records of the largest SR, p50 of 5: one file per VDI (as sr_scan) / one document (the layout before)`, `${f(p50(records!.perVdi))} / ${f(p50(records!.oneDocument))}`],
  ]);
}

/** Every VDI record of the SR at `location`, read as sr_scan reads them and, alternately, from a single layout-1 document holding the same records. */
async function recordReads(location: string): Promise<{ perVdi: number[]; oneDocument: number[] }> {
  const repo = new Repository(new FileBackend(SR, location));
  const { records } = await repo.records.listVdis();
  const { dir, cleanup } = workDir('sr-size-document');
  try {
    const doc = { version: 1, uuid: SR, type: 'FileSR', name_label: '', name_description: '', created: '', vdis: Object.fromEntries(records) };
    mkdirSync(join(dir, '.sm'));
    writeFileSync(join(dir, '.sm', 'metadata.json'), JSON.stringify(doc, null, 1) + '\n');
    const legacy = new Repository(new FileBackend(SR, dir));
    const out = { perVdi: [] as number[], oneDocument: [] as number[] };
    for (let i = 0; i < 5; i++) {
      out.perVdi.push((await timed(() => repo.records.listVdis())).ms);
      out.oneDocument.push((await timed(() => legacy.records.listVdis())).ms);
    }
    return out;
  } finally {
    cleanup();
  }
}

export async function runSrBenchmarks(): Promise<void> {
  await snapshotLatency();
  await scanLatency();
}

export async function runSrSizeBenchmarks(): Promise<void> {
  await costBySrSize();
}
