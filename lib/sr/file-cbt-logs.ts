/**
 * Changed-block logs of a File or NFS SR: `<sr>/<uuid>.cbtlog` beside the
 * images, each replaced whole and atomically (lib/cbt/log-file.ts).
 */
import { join } from 'node:path';
import { logExists, removeLog, writeLog, type CbtLog } from '../cbt/index.js';
import type { CbtLogStore } from './backend.js';
import { isUuid } from './ids.js';

export const CBT_LOG_SUFFIX = '.cbtlog';

export class FileCbtLogs implements CbtLogStore {
  constructor(
    /** The SR's directory. */
    readonly dir: string,
  ) {}

  private file(uuid: string): string {
    if (!isUuid(uuid)) throw new Error(`not a uuid: ${uuid}`); // callers validate; this guards the path
    return join(this.dir, uuid + CBT_LOG_SUFFIX);
  }

  has(uuid: string): Promise<boolean> {
    return logExists(this.file(uuid));
  }

  async path(uuid: string): Promise<string> {
    return this.file(uuid);
  }

  write(uuid: string, log: CbtLog): Promise<void> {
    return writeLog(this.file(uuid), log);
  }

  remove(uuid: string): Promise<void> {
    return removeLog(this.file(uuid));
  }
}
