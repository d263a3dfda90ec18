/**
 * The File SR: VHD files in a local directory (`device_config.location`),
 * reachable at `$SM_ROOT/run/sr-mount/<sr>` through a symlink.
 */
import { mkdir, readdir, realpath, stat, unlink } from 'node:fs/promises';
import { isAbsolute, normalize } from 'node:path';
import { SMError } from '../lib/errors/sm-error.js';
import type { Request } from '../lib/smapi/request.js';
import { clearInterruptedCreate, FileBackend } from '../lib/sr/file-backend.js';
import { SrRecords } from '../lib/sr/records.js';
import { linkSrMount } from '../lib/sr/mount-link.js';
import { srMountPath } from '../lib/sr/paths.js';
import type { SrType } from '../lib/verbs/sr-type.js';
import { srDriver } from '../lib/verbs/sr-driver.js';

function locationOf(req: Request): string {
  const location = req.device_config.location;
  if (!location) throw new SMError('ConfigLocationMissing');
  if (!isAbsolute(location) || location.includes('\0') || location.split('/').includes('..') || normalize(location) === '/') {
    throw new SMError('ConfigLocationMissing', `location must be an absolute directory path: ${JSON.stringify(location.slice(0, 200))}`);
  }
  return normalize(location).replace(/(.)\/+$/, '$1');
}

async function isDirectory(path: string): Promise<boolean> {
  return stat(path).then(
    (s) => s.isDirectory(),
    () => false,
  );
}

/**
 * The SR's directory: `location` itself, or, when it is a symlink to a
 * directory (a common way to place an SR on another disk), what it points at.
 */
async function srDirectory(location: string): Promise<string> {
  if (!(await isDirectory(location))) throw new SMError('SRUnavailable', `${location} is not a directory`);
  return realpath(location);
}

export const fileSrType: SrType = {
  driver: 'FileSR',
  changedBlockTracking: true,
  info: {
    name: 'Local Path VHD',
    description: 'SR plugin which represents disks as VHD files stored on a local path',
    vendor: 'xcp-sm',
    copyright: '(C) 2026 xcp-sm contributors',
    driver_version: '1.0',
    required_api_version: '1.0',
    capabilities: ['THIN_PROVISIONING'],
    configuration: [{ key: 'location', description: 'local directory path (e.g. /srv/sr1)' }],
  },

  async create(req, _sr, init) {
    let location = locationOf(req);
    if (await isDirectory(location)) {
      location = await srDirectory(location);
      await clearInterruptedCreate(location);
      if ((await readdir(location)).length > 0) throw new SMError('SRExists', `${location} is not empty`);
    } else {
      try {
        await mkdir(location);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EEXIST') throw new SMError('SRExists', `${location} exists and is not a directory`);
        throw new SMError('FileSRCreate', `cannot create ${location}: ${code ?? (err as Error).message}`);
      }
    }
    await init({ kind: 'file', dir: location });
  },

  async withStorage(req, _sr, fn) {
    return fn({ kind: 'file', dir: await srDirectory(locationOf(req)) });
  },

  async attach(req, sr) {
    const location = await srDirectory(locationOf(req));
    await linkSrMount(sr, location);
    return { kind: 'file', dir: srMountPath(sr) };
  },

  async detach(_req, sr) {
    await unlink(srMountPath(sr)).catch(() => undefined);
  },

  async probe(req) {
    const location = locationOf(req);
    const meta = await new SrRecords(new FileBackend('00000000-0000-0000-0000-000000000000', location).recordMedium).readSr().catch(() => undefined);
    if (!meta) return '<?xml version="1.0" ?>\n<SRlist/>\n';
    return `<?xml version="1.0" ?>\n<SRlist>\n\t<SR>\n\t\t<UUID>${meta.uuid}</UUID>\n\t</SR>\n</SRlist>\n`;
  },
};

export const fileSrDriver = srDriver(fileSrType);
