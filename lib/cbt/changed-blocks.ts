/**
 * vdi_list_changed_blocks: from a snapshot's log, follow the child links to
 * the target's log and OR the bitmaps of every log after the source, up to
 * and including the target's. A log not closed cleanly counts as every block
 * changed; bitmaps of different sizes are zero-extended to the target's.
 */
import { changedOf, orInto } from './bitmap.js';
import { bitmapBytes, CbtLogError, NIL_UUID, type CbtLog } from './log-format.js';

/** Bounds the walk: a chain of logs is as long as a VDI's snapshots (far below this). */
const MAX_CHAIN = 10_000;

export async function changedBetween(read: (uuid: string) => Promise<CbtLog>, from: string, to: string): Promise<{ bitmap: Buffer; size: number; logs: string[] }> {
  if (from === to) {
    const log = await read(to);
    return { bitmap: Buffer.alloc(bitmapBytes(log.size)), size: log.size, logs: [] };
  }
  const logs: CbtLog[] = [];
  const names: string[] = [];
  let at = (await read(from)).child;
  while (true) {
    if (at === NIL_UUID) throw new CbtLogError(`no chain of logs leads from ${from} to ${to} (it ends after ${names.at(-1) ?? from})`);
    if (names.includes(at) || names.length > MAX_CHAIN) throw new CbtLogError(`the chain of logs from ${from} loops at ${at}`);
    const log = await read(at);
    logs.push(log);
    names.push(at);
    if (at === to) break;
    at = log.child;
  }
  const size = logs.at(-1)!.size;
  const bitmap = Buffer.alloc(bitmapBytes(size));
  for (const log of logs) orInto(bitmap, changedOf(log));
  return { bitmap, size, logs: names };
}
