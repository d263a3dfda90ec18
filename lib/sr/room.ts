/**
 * The room a verb needs on the storage before it starts: a full SR answers
 * SRNoSpace (44) with nothing changed, rather than failing half-way through
 * (on LVM a new image is a thick LV, so "some room left" is not enough).
 */
import { SMError } from '../errors/sm-error.js';
import type { StorageBackend } from './backend.js';

/** Throws SRNoSpace unless the storage has room for new images of these virtual sizes. */
export async function requireRoomFor(backend: StorageBackend, virtualSizes: readonly number[], what: string): Promise<void> {
  await requireBytes(backend, virtualSizes.reduce((sum, size) => sum + backend.newImageBytes(size), 0), what);
}

/** Throws SRNoSpace unless the storage has room for an image to grow (at least 1 MiB: its new metadata). */
export async function requireRoomToGrow(backend: StorageBackend, from: number, to: number, what: string): Promise<void> {
  await requireBytes(backend, Math.max(1024 * 1024, backend.newImageBytes(to) - backend.newImageBytes(from)), what);
}

async function requireBytes(backend: StorageBackend, needed: number, what: string): Promise<void> {
  const { free } = await backend.space();
  if (free < needed) throw new SMError('SRNoSpace', `${what} needs ${needed} bytes, the SR has ${free} free`);
}
