/**
 * SR benchmarks through the real driver executable: vdi_snapshot latency with a
 * process per call and through --serve, sr_scan of an SR with 1200 images, and
 * vdi_create / vdi_snapshot / sr_scan against the number of images in the SR.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
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

interface Harness {
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

async function startSr(dir: string): Promise<Harness> {
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

/** vdi_create, vdi_snapshot (through --serve) and sr_scan at 100, 1,000 and 5,000 images, in one run. */
async function costBySrSize(): Promise<void> {
  const sizes = [100, 1000, 5000];
  const figures = new Map<number, { create: number; snapshot: number; scan: number; images: number }>();
  for (const n of sizes) {
    const { dir, cleanup } = workDir(`sr-size-${n}`);
    const sr = await startSr(dir);
    try {
      await sr.call('sr_create', {}, ['0']);
      await sr.call('sr_attach');
      await populate(join(dir, 'sr'), n);
      const newVdi = async (label: string) =>
        ((await sr.call('vdi_create', {}, ['1073741824', label, '', '', 'false', '', '', 'false'])) as { uuid: string }).uuid;
      const create: number[] = [];
      const snapshot: number[] = [];
      for (let i = 0; i < 30; i++) {
        const { value: vdi, ms } = await timed(() => newVdi(`new${i}`));
        create.push(ms);
        snapshot.push((await timed(() => sr.call('vdi_snapshot', { vdi_uuid: vdi }))).ms);
      }
      const scans: number[] = [];
      let images = 0;
      for (let i = 0; i < 3; i++) {
        const { value, ms } = await timed(() => sr.call('sr_scan'));
        images = (value as unknown[]).length;
        scans.push(ms);
      }
      figures.set(n, { create: percentile(create, 50), snapshot: percentile(snapshot, 50), scan: percentile(scans, 50), images });
    } finally {
      await sr.close();
      cleanup();
    }
  }
  const f = (x: number) => `${x.toFixed(1)} ms`;
  const small = figures.get(sizes[0]!)!;
  const big = figures.get(sizes[sizes.length - 1]!)!;
  report('verb cost against SR size (File SR through --serve; 30 creates and 30 snapshots each)', [
    ...sizes.map((n) => {
      const x = figures.get(n)!;
      return [`${n} images: vdi_create p50 / vdi_snapshot p50 / sr_scan p50 (${x.images} images scanned)`, `${f(x.create)} / ${f(x.snapshot)} / ${f(x.scan)}`] as [string, string];
    }),
    [`ratio ${sizes[sizes.length - 1]} / ${sizes[0]}: vdi_create, vdi_snapshot (goal <= 1.5)`, `${(big.create / small.create).toFixed(2)}, ${(big.snapshot / small.snapshot).toFixed(2)}`],
  ]);
}

export async function runSrBenchmarks(): Promise<void> {
  await snapshotLatency();
  await scanLatency();
}

export async function runSrSizeBenchmarks(): Promise<void> {
  await costBySrSize();
}
