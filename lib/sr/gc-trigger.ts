/** Starts the collector for an SR as a detached process (unless SM_GC=off or this host is a pool slave). */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { getLog } from '../log/index.js';
import { readAttachRecord } from './attach-record.js';
import { installRoot } from './install-root.js';

/** The bundled collector (one file: starts faster), else the compiled module. */
function gcEntry(): string {
  const bundled = join(installRoot(), 'dist', 'bundle', 'sm-gc.mjs');
  return existsSync(bundled) ? bundled : join(installRoot(), 'dist', 'gc', 'sm-gc.js');
}

export async function kickGc(srUuid: string): Promise<void> {
  if (process.env.SM_GC === 'off') {
    getLog().debug(`GC for SR ${srUuid} not started: SM_GC=off`);
    return;
  }
  if ((await readAttachRecord(srUuid))?.role === 'slave') {
    getLog().debug(`GC for SR ${srUuid} not started: this host is a pool slave, the GC runs on the master`);
    return;
  }
  const child = spawn(process.execPath, [gcEntry(), '-u', srUuid, '-g'], { detached: true, stdio: 'ignore', env: process.env });
  child.on('error', (err) => getLog().warn(`GC for SR ${srUuid} failed to start: ${err.message}`));
  child.unref();
  getLog().info(`GC for SR ${srUuid} started (pid ${child.pid})`);
}
