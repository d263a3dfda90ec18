/** Starts the collector for an SR as a detached process (unless SM_GC=off). */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { getLog } from '../log/index.js';
import { installRoot } from './install-root.js';

/** The bundled collector (one file: starts faster), else the compiled module. */
function gcEntry(): string {
  const bundled = join(installRoot(), 'dist', 'bundle', 'sm-gc.mjs');
  return existsSync(bundled) ? bundled : join(installRoot(), 'dist', 'gc', 'sm-gc.js');
}

export function kickGc(srUuid: string): void {
  if (process.env.SM_GC === 'off') {
    getLog().debug(`GC for SR ${srUuid} not started: SM_GC=off`);
    return;
  }
  const child = spawn(process.execPath, [gcEntry(), '-u', srUuid, '-g'], { detached: true, stdio: 'ignore', env: process.env });
  child.on('error', (err) => getLog().warn(`GC for SR ${srUuid} failed to start: ${err.message}`));
  child.unref();
  getLog().info(`GC for SR ${srUuid} started (pid ${child.pid})`);
}
