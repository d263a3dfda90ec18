// An LvSwitch over a directory of marker files (`<dir>/<uuid>` exists = active),
// shared by every process that opens the same directory: what the hold logic
// (lib/sr/lv-holds.ts) switches, without LVM. Counts its calls, so tests can
// check that many images are switched in one call.
import { mkdir, readdir, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { LvSwitch } from '../../lib/sr/lv-holds.js';

export class MarkerLvs implements LvSwitch {
  calls: Array<{ active: boolean; uuids: string[] }> = [];
  /** Activating any of these fails, as lvchange does for an LV it cannot activate. */
  failing = new Set<string>();

  /** `stepMs`: a pause after each activated image, so a test can kill a process mid-activation. */
  constructor(
    readonly dir: string,
    private readonly stepMs = 0,
  ) {}

  async active(): Promise<Set<string>> {
    return new Set(await readdir(this.dir).catch(() => [] as string[]));
  }

  async activate(uuids: string[]): Promise<void> {
    this.calls.push({ active: true, uuids: [...uuids] });
    const bad = uuids.find((u) => this.failing.has(u));
    if (bad) throw new Error(`cannot activate ${bad}`);
    await mkdir(this.dir, { recursive: true });
    for (const u of uuids) {
      await writeFile(join(this.dir, u), '');
      if (this.stepMs > 0) await new Promise((r) => setTimeout(r, this.stepMs));
    }
  }

  async deactivate(uuids: string[]): Promise<void> {
    this.calls.push({ active: false, uuids: [...uuids] });
    for (const u of uuids) await unlink(join(this.dir, u)).catch(() => undefined);
  }
}
