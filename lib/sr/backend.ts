/**
 * The storage-backend seam: where an SR's images live. Snapshot, clone, scan,
 * delete and the GC are written once over this interface; a directory of files
 * and an LVM volume group are two implementations.
 */
import type { CbtLog } from '../cbt/log-format.js';
import type { RecordMedium } from './records.js';

/** A VDI active on some host of the pool: who activated it, how, and when. */
export interface Activation {
  host: string;
  writable: boolean;
  since: string;
}

export interface StorageBackend {
  readonly srUuid: string;
  /** Path the VHD library opens for the image of `uuid` (a file or a device node). */
  imagePath(uuid: string): string;
  /** uuids of every image present. */
  listImages(): Promise<string[]>;
  hasImage(uuid: string): Promise<boolean>;
  /** Makes room for a new image of this virtual size; returns its path. */
  prepareImage(uuid: string, virtualSize: number): Promise<string>;
  removeImage(uuid: string): Promise<void>;
  /**
   * Removes images at once (gone from the SR, durably, when this returns) and
   * leaves giving their space back to `emptyTrash()`: deleting a large file
   * takes tens of milliseconds, which the collector spends beside its next copy.
   * `emptyTrash()` also finishes what a crash left behind.
   */
  discardImages(uuids: string[]): Promise<void>;
  emptyTrash(): Promise<void>;
  /** `sync: false` leaves durability to a later flushImages() covering `to`. */
  renameImage(from: string, to: string, sync?: boolean): Promise<void>;
  /** Makes the images' contents and names durable (one barrier for several steps). */
  flushImages(uuids: string[]): Promise<void>;
  /** Renames `from` over the existing `to` (atomically where the storage allows). */
  replaceImage(from: string, to: string): Promise<void>;
  /**
   * Before data is written into an existing, possibly shrunk image (the GC
   * coalescing a child into its parent), or before its virtual size grows to
   * `virtualSize`: makes room for every block of its virtual size, or of
   * `virtualSize` when larger. LVM: inflate the LV (grow it, then move the
   * footer to its new end). Files: nothing to do. Idempotent, so recovery may
   * run it again.
   */
  prepareWrite(uuid: string, virtualSize?: number): Promise<void>;
  /**
   * Whether an image can be rewritten beside itself and renamed over (a grow
   * past the BAT room reserved at creation). Files: yes. LVM: no.
   */
  readonly canRewriteImages: boolean;
  /**
   * The image became a read-only parent (a snapshot's hidden base): gives back
   * the room it does not use. LVM: deflate the LV. Files: nothing to do.
   */
  settleReadOnly(uuid: string): Promise<void>;
  /**
   * The VDIs' changed-block logs, in blktap's format (DESIGN item 10):
   * `<sr>/<uuid>.cbtlog` files on File and NFS SRs, LVs `<uuid>.cbtlog` on
   * LVM. Absent: this SR type does not track changed blocks (no VDI_CONFIG_CBT).
   */
  readonly cbtLogs?: CbtLogStore;
  /** Bytes the image occupies on the storage. */
  physicalSize(uuid: string): Promise<number>;
  /** What the storage holds that is neither an image nor the SR's own structures (sr_delete refuses to destroy it). */
  foreignEntries(): Promise<string[]>;
  /** Removes the SR's own structures (metadata, journals, its directory or volume group); images must be gone. */
  destroy(): Promise<void>;
  /** Free and total bytes of the storage. */
  space(): Promise<{ free: number; total: number }>;
  /**
   * Bytes a new image of `virtualSize` takes from the storage as soon as it is
   * made: LVM, its thick LV; a file, only its metadata (it grows as written).
   */
  newImageBytes(virtualSize: number): number;

  /** The SR-resident metadata records, as text (records.ts reads and writes them through it). */
  readonly recordMedium: RecordMedium;

  /** Journals: small named documents that survive a crash. */
  listJournals(): Promise<string[]>;
  readJournal(name: string): Promise<string | undefined>;
  writeJournal(name: string, text: string): Promise<void>;
  removeJournal(name: string): Promise<void>;

  /**
   * Runs `fn` with these images reachable (LVM: their LVs active and held by
   * this process). Nested calls join the outermost one, which lets go when it
   * ends: an LV no other holder (a VDI's activation, another process's work)
   * names is deactivated then. Work that creates images runs inside one too,
   * so they are released with it. Files: just runs `fn`.
   */
  withImagesActive<T>(uuids: readonly string[], fn: () => Promise<T>): Promise<T>;
  /** vdi_activate: holds the VDI's chain (leaf to base) reachable until releaseVdi; a second call replaces the first. */
  holdVdi(vdi: string, chain: readonly string[]): Promise<void>;
  /** vdi_deactivate: lets go of holdVdi's images; those nobody else holds become unreachable (LVM: deactivated). */
  releaseVdi(vdi: string): Promise<void>;
  /**
   * This host serves the VDI, and its datapath is paused so that the SR
   * master may change the VDI's images (the pool's pause protocol): let go of
   * what this host keeps of them beyond the open files. LVM: each host's
   * device nodes map the LVs as that host activated them, so the VDI's LVs
   * that no other holder here names are deactivated (the master may rename,
   * resize or remove them). Files: nothing (every host sees the same files).
   * Throws when it cannot: the master's change must not go on.
   */
  beforeRemoteChange(vdi: string): Promise<void>;
  /**
   * The master's change is done and `chainNow` reads the VDI's chain as it
   * is now: hold it again, each image mapped as the storage holds it now, before the
   * datapath reopens it. LVM: holdVdi(chain), then every LV of it reloaded
   * from the VG's metadata (`lvchange --refresh`: a parent other VDIs here
   * kept active may have grown). Files: nothing (the chain is not read).
   */
  afterRemoteChange(vdi: string, chainNow: () => Promise<readonly string[]>): Promise<void>;
  /**
   * Drops holds nothing backs any more (a killed process's, a VDI no longer
   * active per `isVdiActive`) and deactivates what only they held; `all`
   * (sr_attach): every image nobody holds is deactivated.
   */
  settleHolds(isVdiActive: (vdi: string) => Promise<boolean>, all?: boolean): Promise<void>;
  /** The SR lock was just taken again: other processes may have added or removed images since the last listing. */
  forgetListing(): void;

  /**
   * VDI activations: one small record per VDI, written and removed only by
   * the host that activated it. Where `activationsPoolWide`, every host of the
   * pool sees them; else (LVM, whose shared metadata only the master writes)
   * only this host's, and the master learns of other hosts' from the
   * toolstack (activation.ts).
   */
  readonly activationsPoolWide: boolean;
  listActivations(): Promise<Map<string, Activation>>;
  writeActivation(vdi: string, activation: Activation): Promise<void>;
  removeActivation(vdi: string): Promise<void>;
}

/**
 * Where an SR keeps its changed-block logs. The chain of logs along a VDI's
 * snapshots is cbt-logs.ts's, written once over this: a log is read and
 * written at a path (lib/cbt/log-file.ts: a file, or a device rewritten in place).
 */
export interface CbtLogStore {
  /** Whether the VDI has a log (LVM: its LV exists, active or not). */
  has(uuid: string): Promise<boolean>;
  /**
   * The path of an existing log, for reading and writing. LVM: its LV
   * activated and held until the current withImagesActive() ends (the
   * datapath's hold on an active VDI keeps its own log's LV beyond that).
   */
  path(uuid: string): Promise<string>;
  /**
   * Writes the log durably. A new log appears whole or not at all; an
   * existing one is replaced (files: atomically; LVM: in place, the LV grown
   * first when the log outgrew it).
   */
  write(uuid: string, log: CbtLog): Promise<void>;
  /** Removes the log (and what an interrupted write left of it). Nothing to do when absent. */
  remove(uuid: string): Promise<void>;
}
