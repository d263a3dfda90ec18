/** Starts the collector for an SR as a detached process (unless SM_GC=off). */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { getLog } from '../log/index.js';
import { installRoot } from './install-root.js';

export function kickGc(srUuid: string): void {
  if (process.env.SM_GC === 'off') {
    getLog().debug(`GC for SR ${srUuid} not started: SM_GC=off`);
    return;
  }
  const child = spawn(process.execPath, [join(installRoot(), 'dist', 'gc', 'sm-gc.js'), '-u', srUuid, '-g'], { detached: true, stdio: 'ignore', env: process.env });
  child.on('error', (err) => getLog().warn(`GC for SR ${srUuid} failed to start: ${err.message}`));
  child.unref();
  getLog().info(`GC for SR ${srUuid} started (pid ${child.pid})`);
}
