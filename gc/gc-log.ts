/** What the collector tells SMlog: trees (only those that changed), progress, speed. */
import type { SMLog } from '../lib/log/index.js';
import type { Repository } from '../lib/sr/repository.js';
import { formatForest, formatTree, rootsOf } from '../lib/sr/tree-format.js';
import type { Nodes } from './plan.js';

const MiB = 1024 * 1024;

/** A uuid as the GC's log lines name it: its first 8 characters. */
export const short = (uuid: string): string => uuid.slice(0, 8);

export class TreeLogger {
  private shown = new Map<string, string>(); // root uuid -> rendering last logged

  constructor(private readonly log: SMLog) {}

  /** Logs the whole forest the first time, then only the trees that changed. */
  logTrees(repo: Repository, label: string, nodes: Nodes, active: Set<string>, vdiCount: number): void {
    if (this.shown.size === 0) {
      const lines = formatForest({ uuid: repo.uuid, name_label: label }, nodes, active, vdiCount);
      this.log.info(lines.join('\n'));
      for (const r of rootsOf(nodes)) this.shown.set(r.uuid, formatTree(r, nodes, active).join('\n'));
      if (nodes.size === 0) this.shown.set('', '');
      return;
    }
    const now = new Map<string, string>();
    for (const r of rootsOf(nodes)) now.set(r.uuid, formatTree(r, nodes, active).join('\n'));
    const changed = [...now].filter(([root, text]) => this.shown.get(root) !== text).map(([, text]) => text);
    const gone = [...this.shown.keys()].filter((root) => root !== '' && !now.has(root));
    if (changed.length || gone.length) {
      this.log.info(`SR ${repo.uuid.slice(0, 4)} ('${label}'): ${changed.length} VHD trees changed${gone.length ? `, ${gone.length} gone` : ''}:`);
      if (changed.length) this.log.info(changed.join('\n'));
    }
    this.shown = now;
    if (now.size === 0) this.shown.set('', '');
  }
}

/** Rate-limited progress lines during a long copy: percent and MiB/s. */
export function progressReporter(log: SMLog, what: string, totalBytes: number, everyMs = 2000) {
  let last = Date.now();
  return (done: number, elapsedMs: number) => {
    const now = Date.now();
    if (now - last < everyMs) return;
    last = now;
    const pct = totalBytes > 0 ? Math.min(100, (100 * done) / totalBytes) : 100;
    const rate = elapsedMs > 0 ? done / MiB / (elapsedMs / 1000) : 0;
    log.info(`${what}: ${pct.toFixed(0)}% (${(done / MiB).toFixed(1)} of ${(totalBytes / MiB).toFixed(1)} MiB), ${rate.toFixed(1)} MiB/s`);
  };
}
