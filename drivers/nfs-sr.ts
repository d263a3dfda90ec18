/**
 * The NFS SR: a directory `<serverpath>/<sr_uuid>` on an NFS export, mounted at
 * `$SM_ROOT/run/sr-mount/<sr>` with the established options. Above the mount it
 * is the file-backed SR (FileBackend, the shared verbs), not a copy of it.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readdir, rmdir, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SMError } from '../lib/errors/sm-error.js';
import type { Request } from '../lib/smapi/request.js';
import { nfs, InvalidArgumentError } from '../lib/os/index.js';
import type { BackendSpec } from '../lib/sr/attach-record.js';
import { clearInterruptedCreate, FileBackend } from '../lib/sr/file-backend.js';
import { SrRecords } from '../lib/sr/records.js';
import { isUuid } from '../lib/sr/ids.js';
import { srMountPath } from '../lib/sr/paths.js';
import type { SrType } from '../lib/verbs/sr-type.js';
import { srDriver } from '../lib/verbs/sr-driver.js';

interface NfsConfig {
  server: string;
  serverpath: string;
  version: string;
  options?: string;
}

/** device_config, validated before anything is run (argv only, but refuse nonsense early). */
function configOf(req: Request, needPath = true): NfsConfig {
  const dc = req.device_config;
  if (!dc.server) throw new SMError('ConfigServerMissing');
  if (needPath && !dc.serverpath) throw new SMError('ConfigServerPathMissing');
  try {
    const version = nfs.checkNfsVersion(dc.nfsversion);
    nfs.checkMountOptions(dc.options);
    nfs.nfsSource(dc.server, dc.serverpath || '/'); // validates host and path
    return { server: dc.server, serverpath: dc.serverpath ?? '', version, options: dc.options };
  } catch (err) {
    throw toSmError(err);
  }
}

/** lib/os failures -> the SM codes the toolstack knows. */
function toSmError(err: unknown): SMError {
  if (err instanceof SMError) return err;
  if (err instanceof InvalidArgumentError) {
    // Name the key that is wrong: a bad serverpath or options is not a missing server.
    if (err.what === 'NFS export path') return new SMError('ConfigServerPathMissing', err.message);
    if (err.what === 'NFS mount option') return new SMError('NFSMount', err.message);
    return new SMError('ConfigServerMissing', err.message);
  }
  if (err instanceof nfs.NfsError) {
    switch (err.kind) {
      case 'version':
        return new SMError('NFSVersion', err.message);
      case 'unreachable':
        return new SMError('NFSTarget', err.message);
      case 'umount':
        return new SMError('NFSUnMount', err.message);
      default:
        return new SMError('NFSMount', err.message);
    }
  }
  return new SMError('NFSMount', (err as Error).message);
}

async function mountAt(cfg: NfsConfig, path: string, mountpoint: string): Promise<void> {
  await mkdir(mountpoint, { recursive: true });
  try {
    await nfs.mountNfs({ server: cfg.server, path, mountpoint, version: cfg.version, options: cfg.options });
  } catch (err) {
    await rmdir(mountpoint).catch(() => undefined);
    throw toSmError(err);
  }
}

async function unmount(mountpoint: string): Promise<void> {
  try {
    await nfs.umountNfs(mountpoint);
  } catch (err) {
    throw toSmError(err);
  }
  await rmdir(mountpoint).catch(() => undefined);
}

/** Mounts the export's root (serverpath) on a scratch mount point for the duration of `fn`. */
async function withExportRoot<T>(cfg: NfsConfig, sr: string, fn: (root: string) => Promise<T>): Promise<T> {
  const scratch = `${srMountPath(sr)}.export`;
  await mountAt(cfg, cfg.serverpath || '/', scratch);
  try {
    return await fn(scratch);
  } finally {
    await unmount(scratch);
  }
}

async function isMountedSr(sr: string): Promise<boolean> {
  return nfs.isNfsMounted(srMountPath(sr)).catch(() => false);
}

/** Mounted writable, or it is of no use: a read-only export would fail every verb later. */
async function checkWritable(dir: string): Promise<void> {
  const probe = join(dir, `.sm-write-test-${process.pid}`);
  try {
    await writeFile(probe, 'ok');
    await unlink(probe);
  } catch (err) {
    throw new SMError('NFSMount', `the export is not writable: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

const xmlText = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export const nfsSrType: SrType = {
  driver: 'NFSSR',
  changedBlockTracking: true,
  info: {
    name: 'NFS VHD',
    description: 'SR plugin which stores disks as VHD files on a remote NFS filesystem',
    vendor: 'xcp-sm',
    copyright: '(C) 2026 xcp-sm contributors',
    driver_version: '1.0',
    required_api_version: '1.0',
    capabilities: ['THIN_PROVISIONING'],
    configuration: [
      { key: 'server', description: 'hostname or IP address of the NFS server' },
      { key: 'serverpath', description: 'path on the NFS server' },
      { key: 'nfsversion', description: 'NFS version: 3 (default), 4, 4.0, 4.1 or 4.2' },
      { key: 'options', description: 'extra mount options, comma separated' },
    ],
  },

  async create(req, sr, init) {
    const cfg = configOf(req);
    await withExportRoot(cfg, sr, async (root) => {
      const dir = join(root, sr);
      await clearInterruptedCreate(dir);
      const existing = await readdir(dir).catch(() => undefined);
      if (existing && existing.length > 0) throw new SMError('SRExists', `${cfg.server}:${cfg.serverpath}/${sr} is not empty`);
      if (!existing) {
        try {
          await mkdir(dir);
        } catch (err) {
          throw new SMError('NFSCreate', `cannot create ${cfg.serverpath}/${sr}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
        }
      }
      await init({ kind: 'file', dir });
    });
  },

  async withStorage(req, sr, fn) {
    if (await isMountedSr(sr)) return fn({ kind: 'file', dir: srMountPath(sr) });
    const cfg = configOf(req);
    return withExportRoot(cfg, sr, async (root) => {
      const dir = join(root, sr);
      if (!(await stat(dir).catch(() => undefined))?.isDirectory()) throw new SMError('SRUnavailable', `${cfg.serverpath}/${sr} not found on ${cfg.server}`);
      return fn({ kind: 'file', dir });
    });
  },

  async attach(req, sr): Promise<BackendSpec> {
    const cfg = configOf(req);
    const mountpoint = srMountPath(sr);
    if (!(await isMountedSr(sr))) await mountAt(cfg, `${cfg.serverpath.replace(/\/+$/, '')}/${sr}`, mountpoint);
    try {
      await checkWritable(mountpoint);
    } catch (err) {
      await unmount(mountpoint).catch(() => undefined);
      throw err;
    }
    return { kind: 'file', dir: mountpoint };
  },

  async detach(_req, sr) {
    if (await isMountedSr(sr)) await unmount(srMountPath(sr));
    // Not mounted: only the empty mount point may be left (rm without recursive refuses directories).
    else await rmdir(srMountPath(sr)).catch(() => undefined);
  },

  async probe(req) {
    const cfg = configOf(req, false);
    try {
      await nfs.checkServer(cfg.server);
    } catch (err) {
      throw toSmError(err);
    }
    if (!req.device_config.serverpath) {
      // Discovery: the exports, for the user to pick a serverpath from.
      const exports = await nfs.showmount(cfg.server).catch((err) => {
        throw toSmError(err);
      });
      const items = exports.map(
        (e) => `\t<Export>\n\t\t<Target>${xmlText(cfg.server)}</Target>\n\t\t<Path>${xmlText(e.path)}</Path>\n\t\t<Accesslist>${xmlText(e.accesslist.join(','))}</Accesslist>\n\t</Export>\n`,
      );
      process.stderr.write(`<?xml version="1.0" ?>\n<nfs-exports>\n${items.join('')}</nfs-exports>\n`);
      throw new SMError('ConfigServerPathMissing');
    }
    // A scratch mount point of its own: concurrent probes must not share (and unmount) one.
    const probeId = randomUUID();
    const found = await withExportRoot(cfg, probeId, async (root) => {
      const srs: string[] = [];
      for (const name of await readdir(root)) {
        if (!isUuid(name)) continue;
        const meta = await new SrRecords(new FileBackend(name, join(root, name)).recordMedium).readSr().catch(() => undefined);
        if (meta) srs.push(meta.uuid);
      }
      return srs.sort();
    });
    const items = found.map((u) => `\t<SR>\n\t\t<UUID>${u}</UUID>\n\t</SR>\n`).join('');
    return `<?xml version="1.0" ?>\n<SRlist>\n${items}</SRlist>\n`;
  },
};

export const nfsSrDriver = srDriver(nfsSrType);
