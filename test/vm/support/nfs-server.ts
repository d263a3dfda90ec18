/** The kernel NFS server inside the test VM (exportfs, rpc.mountd, rpc.nfsd). */
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { runTool } from '../../../lib/os/run.js';

export interface Export {
  /** Made a tmpfs of its own: the overlay root cannot be exported. */
  path: string;
  /** exports(5) client specs, e.g. ["127.0.0.1"]. */
  clients: string[];
  /** Unique per export; tmpfs has no device number nfsd could use. */
  fsid: number;
}

const EXPORT_OPTIONS = 'rw,no_root_squash,no_subtree_check,sync';

/** exports(5) text for the exports. */
export function exportsFile(exports: readonly Export[]): string {
  return exports.map((e) => `${e.path} ${e.clients.map((c) => `${c}(${EXPORT_OPTIONS},fsid=${e.fsid})`).join(' ')}\n`).join('');
}

async function isMountpoint(path: string): Promise<boolean> {
  return (await readFile('/proc/mounts', 'utf8')).split('\n').some((l) => l.split(' ')[1] === path);
}

export class NfsServer {
  private constructor(readonly exports: readonly Export[]) {}

  /**
   * Serves the exports with nfsd bound to `host` only (so any other loopback
   * address is a server that refuses NFS). Grace periods are cut short: the
   * v4 grace (90 s) would hold opens, lockd's (50 s) the first lock.
   */
  static async start(exports: readonly Export[], host = '127.0.0.1'): Promise<NfsServer> {
    for (const e of exports) {
      await mkdir(e.path, { recursive: true });
      if (!(await isMountpoint(e.path))) await runTool('mount', ['-t', 'tmpfs', '-o', 'mode=755,size=256m', 'tmpfs', e.path]);
    }
    await mkdir('/var/lib/nfs/v4recovery', { recursive: true });
    if (!(await isMountpoint('/proc/fs/nfsd'))) await runTool('mount', ['-t', 'nfsd', 'nfsd', '/proc/fs/nfsd']);
    await writeFile('/etc/exports', exportsFile(exports));
    await writeFile('/proc/sys/fs/nfs/nlm_timeout', '3');
    await writeFile('/proc/sys/fs/nfs/nlm_grace_period', '1');
    if (!existsSync('/run/rpcbind.sock')) await runTool('rpcbind', []);
    await runTool('rpc.statd', ['--no-notify']).catch(() => {}); // already running is fine
    await runTool('exportfs', ['-ra']);
    // One mountd for the whole VM: a second test file reuses the one the first started.
    await runTool('pidof', ['rpc.mountd']).catch(() => runTool('rpc.mountd', []));
    await runTool('rpc.nfsd', ['-H', host, '4']);
    await writeFile('/proc/fs/nfsd/v4_end_grace', 'Y');
    return new NfsServer(exports);
  }

  async stop(): Promise<void> {
    await runTool('rpc.nfsd', ['0']).catch(() => {});
    await runTool('exportfs', ['-ua']).catch(() => {});
  }
}
