/**
 * Journals: written before a multi-step change starts, removed when it is done.
 * A journal found later means the change was interrupted; recovery (recovery.ts)
 * completes or rolls it back.
 */
import type { StorageBackend } from './backend.js';
import { faultPoint } from './fault.js';

export type Journal =
  | { kind: 'create'; vdi: string }
  /** `dataOnly`: vdi_data_destroy (the image goes, the record and CBT log stay). */
  | { kind: 'delete'; vdi: string; dataOnly?: boolean }
  | { kind: 'resize'; vdi: string; size: number }
  /** `cbt`: the links of the VDI's CBT log before the snapshot rotated it (absent: no log). */
  | { kind: 'snapshot'; vdi: string; base: string; snap: string; mode: 'double' | 'single' | 'clone'; cbt?: { parent: string; child: string } }
  /** `chain`: hidden images from the parent's child up to `vdi`, collapsed together (absent: just `vdi`). */
  | { kind: 'coalesce'; vdi: string; parent: string; chain?: string[] }
  /** `removes`: the images deleted once `vdi`'s children point at `parent`, top first (absent: just `vdi`). */
  | { kind: 'relink'; vdi: string; parent: string; children: string[]; removes?: string[] }
  /**
   * `abandon`: vdi_activate came while the copy ran (outside the SR lock): the swap must not happen.
   * `live`: the leaf stays active on this host throughout (gc/live-leaf-coalesce.ts).
   */
  | { kind: 'leaf'; vdi: string; parent: string; abandon?: boolean; live?: boolean };

/** The images a journal names (some may not exist: the change was cut short). */
export function journalImages(j: Journal): string[] {
  const named = [
    j.vdi,
    ...('parent' in j ? [j.parent] : []),
    ...('base' in j ? [j.base, j.snap] : []),
    ...('children' in j ? j.children : []),
    ...('chain' in j && j.chain ? j.chain : []),
    ...('removes' in j && j.removes ? j.removes : []),
  ];
  return [...new Set(named)];
}

export function journalName(j: Journal): string {
  return `${j.kind}-${j.vdi}`;
}

export async function beginJournal(backend: StorageBackend, j: Journal): Promise<void> {
  await backend.writeJournal(journalName(j), JSON.stringify({ ...j, started: new Date().toISOString(), pid: process.pid }));
  faultPoint(`${j.kind}-journaled`);
}

export async function endJournal(backend: StorageBackend, j: Journal): Promise<void> {
  await backend.removeJournal(journalName(j));
}

export async function readJournals(backend: StorageBackend): Promise<Journal[]> {
  const out: Journal[] = [];
  for (const name of await backend.listJournals()) {
    const text = await backend.readJournal(name);
    if (text === undefined) continue;
    try {
      out.push(JSON.parse(text) as Journal);
    } catch {
      // A journal torn mid-write means its change never started.
      await backend.removeJournal(name);
    }
  }
  return out;
}

/**
 * vdi_activate of a VDI whose leaf-coalesce is copying (outside the SR lock):
 * the VDI may be written from now on, so the copy is stale; the collector
 * finds the mark under the lock and abandons instead of swapping.
 */
export async function abandonLeafCoalesce(backend: StorageBackend, vdi: string): Promise<boolean> {
  const name = journalName({ kind: 'leaf', vdi, parent: '' });
  const text = await backend.readJournal(name);
  if (text === undefined) return false;
  let j: Journal;
  try {
    j = JSON.parse(text) as Journal;
  } catch {
    return false;
  }
  if (j.kind !== 'leaf' || j.abandon) return false;
  await backend.writeJournal(name, JSON.stringify({ ...j, abandon: true }));
  return true;
}
