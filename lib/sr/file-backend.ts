/**
 * A directory of `<uuid>.vhd` files (File SR, NFS SR). SR metadata and journals
 * live in the directory's `.sm/` folder, so they travel with the SR:
 * `.sm/sr.json` (the SR record), `.sm/vdi/<uuid>.json` (one record per VDI,
 * each replaced atomically; their temp files are staged in `.sm/` itself, so
 * the sweep of `.sm/` finds what a crash left without listing the records),
 * `.sm/journal/`, `.sm/active/`, `.sm/trash/`; `.sm/metadata.json` is the
 * layout-1 document an SR holds until its conversion.
 */
import { mkdir, open, readdir, readFile, rename, rm, rmdir, stat, statfs, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { getLog } from '../log/index.js';
import { createFileDurably, sweepAtomicTemps, syncDir, writeFileAtomic, writeFilesAtomic } from './atomic-write.js';
import { listActivationsIn, removeActivationIn, writeActivationIn } from './activation-dir.js';
import type { Activation, StorageBackend } from './backend.js';
import { faultPoint } from './fault.js';
import { FileCbtLogs } from './file-cbt-logs.js';
import { isUuid } from './ids.js';
import type { RecordMedium } from './records.js';
import { mapLimit } from '../util/map-limit.js';
import { readSmallFile } from '../util/small-reads.js';

const VHD_SUFFIX = '.vhd';
/** A VDI's CBT log, or the temp file of its replacement (lib/cbt/log-file.ts). */
const CBT_LOG_NAME = /^([0-9a-f-]{36})\.cbtlog(\.tmp)?$/;
const META_DIR = '.sm';
/** A new file image needs only its header, footer and BAT; below this much free room no verb starts one. */
const NEW_FILE_BYTES = 1024 * 1024;
const JOURNAL_NAME = /^[a-z]+-[0-9a-f-]{36}$/;
const SR_RECORD = 'sr.json';
const LEGACY_DOCUMENT = 'metadata.json';
const RECORD_DIR = 'vdi';

/**
 * An sr_create killed before its metadata was in place leaves the directory
 * holding only `.sm/` without metadata (a temp file, an empty folder): that is
 * no SR, so it is cleared and the directory counts as empty again.
 */
export async function clearInterruptedCreate(dir: string): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  if (names.length !== 1 || names[0] !== META_DIR) return;
  for (const name of [SR_RECORD, LEGACY_DOCUMENT]) if (await stat(join(dir, META_DIR, name)).catch(() => undefined)) return;
  await rm(join(dir, META_DIR), { recursive: true, force: true });
  getLog().info(`${dir}: leftovers of an interrupted sr_create removed`);
}

export class FileBackend implements StorageBackend {
  readonly recordMedium: RecordMedium;
  readonly cbtLogs: FileCbtLogs;

  constructor(
    readonly srUuid: string,
    /** The SR's directory. */
    readonly dir: string,
  ) {
    this.recordMedium = new FileRecordMedium(join(dir, META_DIR));
    this.cbtLogs = new FileCbtLogs(dir);
  }

  imagePath(uuid: string): string {
    if (!isUuid(uuid)) throw new Error(`not a uuid: ${uuid}`); // callers validate; this guards the path
    return join(this.dir, uuid + VHD_SUFFIX);
  }

  async listImages(): Promise<string[]> {
    const names = await readdir(this.dir);
    return names
      .filter((n) => n.endsWith(VHD_SUFFIX) && isUuid(n.slice(0, -VHD_SUFFIX.length)))
      .map((n) => n.slice(0, -VHD_SUFFIX.length))
      .sort();
  }

  /** Files are always reachable: nothing to activate or hold. */
  withImagesActive<T>(_uuids: readonly string[], fn: () => Promise<T>): Promise<T> {
    return fn();
  }

  async holdVdi(): Promise<void> {}

  async releaseVdi(): Promise<void> {}

  async beforeRemoteChange(): Promise<void> {}

  async afterRemoteChange(): Promise<void> {}

  async settleHolds(): Promise<void> {}

  forgetListing(): void {}

  async hasImage(uuid: string): Promise<boolean> {
    return stat(this.imagePath(uuid)).then(
      () => true,
      () => false,
    );
  }

  async prepareImage(uuid: string): Promise<string> {
    return this.imagePath(uuid); // the VHD library creates the file itself
  }

  async removeImage(uuid: string): Promise<void> {
    await unlink(this.imagePath(uuid)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    await syncDir(this.dir);
  }

  /** Renamed into `.sm/trash/`: atomic and instant; emptyTrash() deletes them. */
  async discardImages(uuids: string[]): Promise<void> {
    await mkdir(this.metaPath('trash'), { recursive: true });
    for (const u of uuids) {
      await rename(this.imagePath(u), this.metaPath('trash', u + VHD_SUFFIX)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
    await syncDir(this.dir);
  }

  /** One file at a time: run beside a copy, it leaves the copy the other I/O threads. */
  async emptyTrash(): Promise<void> {
    const dir = this.metaPath('trash');
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      await unlink(join(dir, name)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
  }

  async renameImage(from: string, to: string, sync = true): Promise<void> {
    await rename(this.imagePath(from), this.imagePath(to));
    if (sync) await syncDir(this.dir);
  }

  async flushImages(uuids: string[]): Promise<void> {
    const syncFile = async (path: string) => {
      const fh = await open(path, 'r+');
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    };
    // All at once: the directory's entries and every file's data in one round of waits.
    await Promise.all([...uuids.map((u) => syncFile(this.imagePath(u))), syncDir(this.dir)]);
  }

  async replaceImage(from: string, to: string): Promise<void> {
    await this.renameImage(from, to); // rename(2) replaces the target atomically
  }

  /** Files grow as they are written. */
  async prepareWrite(): Promise<void> {}

  readonly canRewriteImages = true;
  readonly activationsPoolWide = true;

  /** A file holds only what was written. */
  async settleReadOnly(): Promise<void> {}

  async physicalSize(uuid: string): Promise<number> {
    return (await stat(this.imagePath(uuid))).size;
  }

  async foreignEntries(): Promise<string[]> {
    const names = await readdir(this.dir);
    const own = (n: string) => n === META_DIR || (n.endsWith(VHD_SUFFIX) && isUuid(n.slice(0, -VHD_SUFFIX.length))) || isUuid(CBT_LOG_NAME.exec(n)?.[1] ?? '');
    return names.filter((n) => !own(n)).sort();
  }

  async destroy(): Promise<void> {
    await rm(join(this.dir, META_DIR), { recursive: true, force: true });
    faultPoint('sr-delete-metadata-gone');
    // Logs of VDIs whose data was destroyed (cbt_metadata) go with the SR.
    for (const n of (await readdir(this.dir).catch(() => [] as string[])).filter((n) => CBT_LOG_NAME.test(n))) await unlink(join(this.dir, n)).catch(() => undefined);
    await rmdir(this.dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  async space(): Promise<{ free: number; total: number }> {
    const s = await statfs(this.dir);
    return { free: s.bavail * s.bsize, total: s.blocks * s.bsize };
  }

  newImageBytes(): number {
    return NEW_FILE_BYTES;
  }

  private metaPath(...parts: string[]): string {
    return join(this.dir, META_DIR, ...parts);
  }

  async listJournals(): Promise<string[]> {
    await this.sweepScratch();
    const names = await readdir(this.metaPath('journal')).catch(() => [] as string[]);
    return names.filter((n) => n.endsWith('.json')).map((n) => n.slice(0, -5)).filter((n) => JOURNAL_NAME.test(n)).sort();
  }

  /** Removes the temp files of atomic writes a crash left behind (recovery lists journals first). */
  private async sweepScratch(): Promise<void> {
    // Activation records are written by every host of a pool: a writer's pid means nothing here, only age does.
    const dirs: [string, boolean][] = [[this.metaPath(), false], [this.metaPath('journal'), false], [this.metaPath('active'), true]];
    for (const [dir, byAge] of dirs) {
      for (const name of await sweepAtomicTemps(dir, { byAge })) getLog().info(`recovery: removed ${name}, the temp file of an interrupted write`);
    }
  }

  async readJournal(name: string): Promise<string | undefined> {
    return readFile(this.metaPath('journal', `${name}.json`), 'utf8').catch(() => undefined);
  }

  async writeJournal(name: string, text: string): Promise<void> {
    const path = this.metaPath('journal', `${name}.json`);
    // A new journal is written in place (one fsync round): torn, it reads as never started,
    // which is true, as its change starts only after this returns. A rewrite stays atomic.
    if (!(await createFileDurably(path, text))) await writeFileAtomic(path, text);
  }

  async removeJournal(name: string): Promise<void> {
    // Not synced: a journal that reappears after a crash finds its change complete.
    await unlink(this.metaPath('journal', `${name}.json`)).catch(() => undefined);
  }

  /** In the SR's `.sm/active/`, so every host that mounts the SR sees them. */
  listActivations(): Promise<Map<string, Activation>> {
    return listActivationsIn(this.metaPath('active'));
  }

  writeActivation(vdi: string, activation: Activation): Promise<void> {
    return writeActivationIn(this.metaPath('active'), vdi, activation);
  }

  removeActivation(vdi: string): Promise<void> {
    return removeActivationIn(this.metaPath('active'), vdi);
  }
}

/** The records as files in `.sm/` (see FileBackend). */
class FileRecordMedium implements RecordMedium {
  private recordDirMade = false;

  constructor(private readonly metaDir: string) {}

  private read(path: string): Promise<string | undefined> {
    return readSmallFile(path);
  }

  private recordPath(uuid: string): string {
    if (!isUuid(uuid)) throw new Error(`not a uuid: ${uuid}`);
    return join(this.metaDir, RECORD_DIR, `${uuid}.json`);
  }

  readSrText(): Promise<string | undefined> {
    return this.read(join(this.metaDir, SR_RECORD));
  }

  async writeSrText(text: string): Promise<void> {
    await writeFileAtomic(join(this.metaDir, SR_RECORD), text, {
      tempWritten: () => faultPoint('metadata-temp-written'),
      renamed: () => faultPoint('metadata-renamed'),
    });
  }

  readLegacyText(): Promise<string | undefined> {
    return this.read(join(this.metaDir, LEGACY_DOCUMENT));
  }

  async hasLegacy(): Promise<boolean> {
    return (await stat(join(this.metaDir, LEGACY_DOCUMENT)).catch(() => undefined)) !== undefined;
  }

  async removeLegacy(): Promise<void> {
    await unlink(join(this.metaDir, LEGACY_DOCUMENT)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
    await syncDir(this.metaDir);
  }

  readRecordText(uuid: string): Promise<string | undefined> {
    return this.read(this.recordPath(uuid));
  }

  async listRecordTexts(): Promise<Map<string, string>> {
    const names = await readdir(join(this.metaDir, RECORD_DIR)).catch(() => [] as string[]);
    const uuids = names.filter((n) => n.endsWith('.json') && isUuid(n.slice(0, -5))).map((n) => n.slice(0, -5));
    const texts = await mapLimit(uuids, 64, async (u) => [u, await this.readRecordText(u)] as const);
    return new Map(texts.filter((e): e is readonly [string, string] => e[1] !== undefined));
  }

  async writeRecordTexts(records: ReadonlyArray<readonly [string, string]>, after?: Promise<unknown>): Promise<void> {
    if (records.length === 0) {
      await after;
      return;
    }
    const dir = join(this.metaDir, RECORD_DIR);
    if (!this.recordDirMade) {
      // Its entry in `.sm/` durable before any record is renamed into it.
      if (await mkdir(dir, { recursive: true })) await syncDir(this.metaDir);
      this.recordDirMade = true;
    }
    await writeFilesAtomic(dir, records.map(([u, text]) => [`${u}.json`, text] as const), {
      tempDir: this.metaDir,
      after,
      tempWritten: () => faultPoint('metadata-temp-written'),
      renamed: () => faultPoint('metadata-renamed'),
    });
  }

  async removeRecordTexts(uuids: readonly string[]): Promise<void> {
    for (const u of uuids) {
      await unlink(this.recordPath(u)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
    faultPoint('records-dropped');
    await syncDir(join(this.metaDir, RECORD_DIR)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
}
